"""``detprune eval``: the metrics table, KITTI result files, the user's val list, the protocol
flags, and classes matched by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from detprune.cli import main
from detprune.evaluation.report import Report

IMGSZ = "64"  # small: these check the plumbing, not a detector's accuracy


def _eval(capsys, *argv) -> tuple[int, str, str]:
    code = main(["eval", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def frames(synthetic_kitti) -> list[str]:
    return sorted(p.stem for p in (synthetic_kitti / "label_2").glob("*.txt"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A yolov8n checkpoint whose classes are Car, Pedestrian, Cyclist (untrained weights)."""
    from detprune.adapters.yolo import YoloAdapter

    adapter = YoloAdapter()
    model = adapter.load("yolov8n.yaml", class_names=["Car", "Pedestrian", "Cyclist"])
    return adapter.save(model, tmp_path_factory.mktemp("eval") / "kitti3.pt")


def test_eval_prints_the_table_and_writes_kitti_results_for_the_val_list(synthetic_kitti, frames, tmp_path, capsys):
    listing = tmp_path / "val.txt"
    listing.write_text(f"# three frames\n{frames[5]}\n{frames[1]}\n\n{frames[9]}\n")
    code, out, err = _eval(
        capsys,
        "--model",
        "yolov8n.yaml",
        "--random-init",
        "--data",
        synthetic_kitti,
        "--imgsz",
        IMGSZ,
        "--val-list",
        listing,
        "--kitti-results",
        tmp_path / "results",
        "--json",
        tmp_path / "m.json",
        "--device",
        "cpu",
        "--letterbox",
        "rect",
        "--nms-iou",
        "0.6",
        "--max-det",
        "50",
        "--kitti-protocol",
        "exact",
    )
    assert code == 0, err
    for row in (
        "mAP50-95",
        "mAP50",
        "AP small",
        "AP medium",
        "AP large",
        "KITTI AP_R40",
        "moderate",
        "Parameters",
        "FLOPs",
    ):
        assert row in out
    assert "Class (AP50-95)" in out and "Pedestrian" in out
    assert "3 images" in out and "rect letterbox" in out and "NMS IoU 0.6" in out and "max 50 detections" in out
    written = sorted(p.stem for p in (tmp_path / "results").glob("*.txt"))
    assert written == sorted([frames[1], frames[5], frames[9]])  # exactly the listed frames
    for path in (tmp_path / "results").glob("*.txt"):
        for line in path.read_text().splitlines():
            assert len(line.split()) == 16 and line.split()[0] in {"Car", "Pedestrian", "Cyclist"}
    report = Report.load(tmp_path / "m.json")
    (summary,) = report.variants.values()
    assert summary.metrics["num_images"] == 3 and summary.metrics["kitti"]["protocol"] == "exact"
    assert summary.info["letterbox"] == "rect" and summary.info["nms_iou"] == 0.6
    assert json.loads((tmp_path / "m.json").read_text())["run"]["val_list"] == str(listing)


def test_eval_rejects_an_unknown_frame_id_and_bad_flags_in_one_line(synthetic_kitti, frames, tmp_path, capsys):
    listing = tmp_path / "val.txt"
    listing.write_text(f"{frames[0]}\n00999x\n")
    code, _, err = _eval(capsys, "--model", "yolov8n.yaml", "--random-init",
                         "--data", synthetic_kitti, "--val-list", listing)
    assert code == 2 and "frame id '00999x' is not in dataset" in err and err.count("\n") == 1
    code, _, err = _eval(capsys, "--model", "yolov8n.yaml", "--random-init",
                         "--data", synthetic_kitti, "--nms-iou", "1.5")
    assert code == 2 and "--nms-iou must lie in (0, 1]" in err


def test_eval_takes_a_fixed_rect_canvas_and_it_is_what_the_api_measures(synthetic_kitti, checkpoint, tmp_path, capsys):
    """``--imgsz H,W`` letterboxes every image into that canvas, as the accuracy benchmark evaluates
    (its 640x224 rect training shape): the CLI then reports what ``adapter.evaluate`` does there."""
    from detprune.adapters.yolo import YoloAdapter
    from detprune.data.loader import load_eval_split

    code, out, err = _eval(capsys, "--model", checkpoint, "--data", synthetic_kitti, "--imgsz", "64,96",
                           "--json", tmp_path / "m.json", "--device", "cpu", "--conf", "0.0001")
    assert code == 0, err
    assert "64x96 px letterbox into a fixed 64x96 canvas" in out
    (summary,) = Report.load(tmp_path / "m.json").variants.values()
    assert summary.info["imgsz"] == [64, 96]
    adapter = YoloAdapter()
    dataset = load_eval_split(synthetic_kitti, "val")
    direct = adapter.evaluate(adapter.load_checkpoint(checkpoint), dataset, imgsz=(64, 96), conf=0.0001, progress=False)
    assert summary.metrics["num_images"] == len(dataset)
    assert summary.metrics["mAP"] == pytest.approx(direct["mAP"], abs=1e-12)
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "--model", str(checkpoint), "--data", str(synthetic_kitti), "--imgsz", "16,96"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.splitlines()[-1].endswith(
        "--imgsz takes one or two sizes of at least 32, got '16,96'"
    )


def test_eval_matches_a_checkpoint_s_classes_by_name(synthetic_kitti, checkpoint, tmp_path, capsys):
    common = ["--model", checkpoint, "--data", synthetic_kitti, "--imgsz", IMGSZ, "--val-count", "3", "--device", "cpu"]
    code, _, err = _eval(capsys, *common, "--class-map", "kitti8")
    assert code == 2 and err.count("\n") == 1
    assert "model's classes (Car, Pedestrian, Cyclist) are not the data's (Car, Van, Truck," in err
    reordered = tmp_path / "reordered.yaml"  # the same classes, numbered Cyclist, Car, Pedestrian
    reordered.write_text("Cyclist: Cyclist\nCar: Car\nPedestrian: Pedestrian\n")
    in_order = tmp_path / "in_order.yaml"
    in_order.write_text("Car: Car\nPedestrian: Pedestrian\nCyclist: Cyclist\n")
    code, out, err = _eval(capsys, *common, "--class-map", reordered, "--json", tmp_path / "reordered.json")
    assert code == 0 and "in another order: labels matched by name" in err
    code, out, err = _eval(capsys, *common, "--class-map", in_order, "--json", tmp_path / "matched.json")
    assert code == 0 and "another order" not in err
    matched, remapped = (next(iter(Report.load(tmp_path / f"{n}.json").variants.values())).metrics
                         for n in ("matched", "reordered"))
    assert remapped["num_objects"] == matched["num_objects"]
    assert remapped["per_class_AP"] == pytest.approx(matched["per_class_AP"])


def test_prune_and_the_api_evaluate_on_the_val_list_with_the_protocol_flags(synthetic_kitti, frames, tmp_path, capsys):
    import detprune

    listing = tmp_path / "val.txt"
    listing.write_text(f"{frames[2]}\n{frames[4]}\n")
    model = detprune.load("yolov8n.yaml", class_names=["Car", "Pedestrian", "Cyclist"], prepare=False)
    metrics = detprune.evaluate(model, synthetic_kitti, split="val", val_list=listing, imgsz=64, letterbox="rect",
                                iou=0.5, max_det=20, kitti_protocol="exact")
    assert metrics["num_images"] == 2 and metrics["kitti"]["protocol"] == "exact"
    out = tmp_path / "pruned"
    code = main(["prune", "--model", "yolov8n.yaml", "--random-init",
                 "--data", str(synthetic_kitti), "--ratio", "0.2", "--imgsz", "64",
                 "--val-list", str(listing), "--latency-runs", "0", "--letterbox", "rect", "--nms-iou", "0.5",
                 "--device", "cpu", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    report = Report.load(out)
    for summary in report.variants.values():  # before and after: the listed frames, the asked protocol
        assert summary.metrics["num_images"] == 2
        assert summary.info["evaluation"] == {"conf": 0.001, "iou": 0.5, "max_det": 300, "letterbox": "rect"}
