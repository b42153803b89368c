"""A perception engineer's path on their own frames (issue #28): one folder to train on, another to
validate on, a shared recipe, the shape they deploy, one default image size, every number in the JSON."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
import yaml

from detprune import cli
from detprune.cli import main
from detprune.data.synthetic import generate_scenes

from pruning_toys import one_thread  # noqa: F401

REPO_CONFIGS = __import__("pathlib").Path(__file__).resolve().parents[2] / "configs"
CLASSES = ["Car", "Pedestrian", "Cyclist"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A user's training frames and their separate validation frames: two KITTI-format folders."""
    root = tmp_path_factory.mktemp("mine")
    frames = generate_scenes(root / "frames", num_images=6, seed=5, width=416, height=128)
    val = generate_scenes(root / "val", num_images=3, seed=6, width=416, height=128)
    return frames, val


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A YOLOv8n checkpoint that records a training size (96) and data, as a trained one does."""
    from detprune.adapters import get_adapter

    adapter = get_adapter("yolov8n.yaml")
    model = adapter.load("yolov8n.yaml", class_names=CLASSES)
    model.args = {"task": "detect", "data": "mine.yaml", "imgsz": 96}
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    adapter.save(model, path)
    return path


def _labels(folder):
    return sorted(p.name for p in folder.iterdir())


# --- training on all of a folder, validating on another ----------------------------------------


def test_data_convert_trains_on_every_frame_and_validates_on_another_folder(folders, tmp_path, capsys):
    frames, val = folders
    out = tmp_path / "yolo"
    assert main(["data", "convert", str(frames), "--val-data", str(val), "--to", "yolo", "--out", str(out)]) == 0
    assert len(_labels(out / "labels" / "train")) == 6 and len(_labels(out / "labels" / "val")) == 3
    assert "train 6 images" in capsys.readouterr().out


def test_data_convert_takes_a_train_list(folders, tmp_path):
    frames, val = folders
    listed = tmp_path / "train.txt"
    listed.write_text("# my training frames\n000000\n000002\n000004\n")
    out = tmp_path / "by-list"
    assert main(["data", "convert", str(frames), "--train-list", str(listed), "--to", "yolo", "--out", str(out)]) == 0
    assert _labels(out / "labels" / "train") == ["000000.txt", "000002.txt", "000004.txt"]
    assert _labels(out / "labels" / "val") == ["000001.txt", "000003.txt", "000005.txt"]
    both = tmp_path / "list-and-folder"
    assert (
        main(
            [
                "data",
                "convert",
                str(frames),
                "--train-list",
                str(listed),
                "--val-data",
                str(val),
                "--to",
                "yolo",
                "--out",
                str(both),
            ]
        )
        == 0
    )
    assert len(_labels(both / "labels" / "train")) == 3 and len(_labels(both / "labels" / "val")) == 3


def test_no_val_frames_says_how_to_train_on_every_frame(folders, tmp_path, capsys):
    frames, _ = folders
    out = tmp_path / "none"
    assert main(["data", "convert", str(frames), "--val-count", "0", "--to", "yolo", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--val-data" in err and err.count("\n") == 1 and not out.exists()


def test_a_yaml_with_both_splits_on_one_folder_converts(folders, tmp_path):
    frames, _ = folders
    from detprune.data.convert import write_yolo_dataset
    from detprune.data.loader import load_dataset

    data = load_dataset(frames)
    flat = write_yolo_dataset(data[:3], data[3:], tmp_path / "flat")
    one = tmp_path / "one.yaml"
    one.write_text(
        yaml.safe_dump(
            {
                "path": str(flat.parent),
                "train": "images/train",
                "val": "images/train",
                "names": dict(enumerate(CLASSES)),
            }
        )
    )
    out = tmp_path / "converted"
    assert main(["data", "convert", str(one), "--to", "yolo", "--out", str(out)]) == 0
    assert len(_labels(out / "labels" / "train")) == 3 and len(_labels(out / "labels" / "val")) == 3


def test_prune_evaluates_on_the_separate_folder(folders, trained, tmp_path):
    frames, val = folders
    out = tmp_path / "prune"
    assert (
        main(
            [
                "prune",
                "--model",
                str(trained),
                "--data",
                str(frames),
                "--val-data",
                str(val),
                "--imgsz",
                "64,128",
                "--target-flops",
                "0.7",
                "--batch-size",
                "3",
                "--latency-runs",
                "0",
                "--device",
                "cpu",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    before, after = report["variants"]
    assert before["metrics"]["num_images"] == after["metrics"]["num_images"] == 3  # all of the val folder
    assert before["info"]["input_shape"] == after["info"]["input_shape"] == [64, 128]  # one shape for both
    assert report["run"]["input_shape"] == "64x128" and report["run"]["val_data"] == str(val)


# --- the benchmark's settings as a recipe; --threads ------------------------------------------------


def _parse(monkeypatch, *argv):
    monkeypatch.setattr(cli, "_PARSER", None)
    return cli.parse_command_line(cli.build_parser_cached(), list(argv))


def test_one_recipe_for_train_prune_and_finetune(monkeypatch):
    recipe = str(REPO_CONFIGS / "kitti-yolov5n-640rect.yaml")
    train = _parse(monkeypatch, "train", "--config", recipe)
    assert (train.batch, train.lr0, train.workers, train.threads) == (8, 0.01, 0, 2)
    assert train.trainer_args == {"rect": True, "warmup_epochs": 1, "deterministic": True}
    prune = _parse(monkeypatch, "prune", "--config", recipe, "--target-flops", "0.6")
    assert prune.imgsz == [224, 640] and prune.target_flops == 0.6 and prune.threads == 2
    from detprune.workflow.config import PruneConfig

    config = PruneConfig.from_namespace(prune).validate()
    assert config.imgsz == (224, 640) and config.trainer_args["rect"] is True
    finetune = _parse(monkeypatch, "finetune", "--config", recipe)
    assert finetune.model.endswith("pruned.pt") and finetune.lr0 == 0.01 and finetune.threads == 2


def test_a_recipe_section_of_another_command_is_not_read(monkeypatch, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("seed: 3\ntrain: {epochs: 2}\n")
    with pytest.raises(Exception, match="none for 'detprune prune'"):
        _parse(monkeypatch, "prune", "--config", str(recipe), "--model", "m.pt")
    assert _parse(monkeypatch, "train", "--config", str(recipe)).epochs == 2


def test_threads_sets_torchs_threads(trained, tmp_path):
    before = torch.get_num_threads()
    try:
        assert (
            main(
                [
                    "prune",
                    "--model",
                    str(trained),
                    "--ratio",
                    "0.2",
                    "--threads",
                    "1",
                    "--imgsz",
                    "64",
                    "--out",
                    str(tmp_path / "t"),
                ]
            )
            == 0
        )
        assert torch.get_num_threads() == 1
        assert (
            main(
                [
                    "prune",
                    "--model",
                    str(trained),
                    "--ratio",
                    "0.2",
                    "--threads",
                    "0",
                    "--imgsz",
                    "64",
                    "--out",
                    str(tmp_path / "t0"),
                ]
            )
            == 2
        )
    finally:
        torch.set_num_threads(before)


# --- H,W and one default size -------------------------------------------------------------------------

COMMANDS_WITH_IMGSZ = {
    "eval": ["--model", "m.pt", "--data", "d"],
    "prune": ["--model", "m.pt", "--ratio", "0.2"],
    "score": ["--model", "m.pt"],
    "search": ["--model", "m.pt", "--data", "d", "--target-flops", "0.5"],
    "export": ["--model", "m.pt", "--out", "m.onnx"],
    "bench": ["--model", "m.pt", "--pruned", "p.pt"],
    "train": ["--data", "d", "--epochs", "1"],
    "finetune": ["--model", "m.pt", "--data", "d", "--epochs", "1"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS_WITH_IMGSZ))
def test_every_command_takes_h_w_and_defaults_to_the_models_size(monkeypatch, command):
    args = _parse(monkeypatch, command, *COMMANDS_WITH_IMGSZ[command], "--imgsz", "224,640")
    assert args.imgsz == (224, 640)
    assert _parse(monkeypatch, command, *COMMANDS_WITH_IMGSZ[command]).imgsz is None  # resolved from the model


def test_the_default_size_is_the_models_training_size_else_the_library_default(trained):
    from detprune.adapters import get_adapter
    from detprune.defaults import DEFAULT_IMGSZ
    from detprune.workflow.imgsz import resolve_imgsz

    adapter = get_adapter(str(trained))
    assert resolve_imgsz(None, adapter.load(str(trained))) == 96
    assert resolve_imgsz(None, adapter.load("yolov8n.yaml", class_names=CLASSES)) == DEFAULT_IMGSZ
    assert resolve_imgsz((64, 128), adapter.load(str(trained))) == (64, 128)


def test_export_writes_the_graph_at_the_models_training_size(trained, tmp_path, capsys):
    import onnx

    out = tmp_path / "m.onnx"
    assert main(["export", "--model", str(trained), "--out", str(out)]) == 0
    dims = [d.dim_value for d in onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim]
    assert dims[2:] == [96, 96]
    assert "input 96x96 (the model's training size)" in capsys.readouterr().out


# --- eval: the shape it saw, KITTI only on KITTI, everything in the JSON ------------------------------


def test_eval_rect_names_the_rect_shape_and_counts_its_flops(folders, trained, tmp_path, capsys):
    _, val = folders
    report = tmp_path / "rect.json"
    assert (
        main(
            [
                "eval",
                "--model",
                str(trained),
                "--data",
                str(val),
                "--split",
                "all",
                "--imgsz",
                "128",
                "--letterbox",
                "rect",
                "--device",
                "cpu",
                "--json",
                str(report),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    # a 416x128 frame at 128, as ultralytics' val rect: 0.31 x 128 and 128, each plus half a stride, in strides
    assert "128x128" not in printed and "64x160 px rect letterbox, long side 128" in printed
    variant = json.loads(report.read_text())["variants"][0]
    assert variant["info"]["input_shape"] == [64, 160]
    from detprune.adapters import get_adapter
    from detprune.workflow.measure import model_cost

    adapter = get_adapter(str(trained))
    model = adapter.load(str(trained))
    assert variant["flops"] == model_cost(adapter, model, (64, 160)).flops < model_cost(adapter, model, 128).flops


def test_eval_json_holds_every_printed_table_with_its_protocol_and_shape(folders, trained, tmp_path, capsys):
    _, val = folders
    report = tmp_path / "kitti.json"
    assert (
        main(
            [
                "eval",
                "--model",
                str(trained),
                "--data",
                str(val),
                "--split",
                "all",
                "--imgsz",
                "64,128",
                "--device",
                "cpu",
                "--json",
                str(report),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    tables = json.loads(report.read_text())["tables"]
    assert set(tables) == {"summary", "per_class_AP", "kitti"}
    for table in tables.values():
        assert table["input_shape"] == "64x128" and table["protocol"] and table["rows"]
        for row in table["rows"]:
            assert all(cell in printed for cell in row if cell)  # every number printed is in the JSON
    assert "devkit" in tables["kitti"]["protocol"]


def test_eval_prints_kitti_levels_only_for_kitti_sources(folders, trained, tmp_path, capsys):
    frames, val = folders
    yolo = tmp_path / "yolo"
    assert main(["data", "convert", str(frames), "--val-data", str(val), "--to", "yolo", "--out", str(yolo)]) == 0
    capsys.readouterr()
    assert (
        main(
            ["eval", "--model", str(trained), "--data", str(yolo / "data.yaml"), "--imgsz", "64,128", "--device", "cpu"]
        )
        == 0
    )
    assert "KITTI" not in capsys.readouterr().out
    assert (
        main(
            [
                "eval",
                "--model",
                str(trained),
                "--data",
                str(val),
                "--split",
                "all",
                "--imgsz",
                "64,128",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "KITTI AP_R40" in capsys.readouterr().out


# --- bench rows by file name --------------------------------------------------------------------------


def test_bench_names_its_rows_by_file():
    from detprune.commands.bench import pruned_labels

    assert pruned_labels(["runs/a/pruned.pt"]) == ["pruned"]
    assert pruned_labels(["runs/a/pruned.pt", "runs/b/pruned.pt"]) == ["a/pruned.pt", "b/pruned.pt"]
    assert pruned_labels(["x/taylor.pt", "x/l1.pt"]) == ["taylor.pt", "l1.pt"]


def test_argparse_namespace_is_not_needed_for_a_config():
    from detprune.workflow.config import PruneConfig

    assert PruneConfig.from_namespace(argparse.Namespace(model="m", ratio=0.2)).ratio == 0.2


# --- the ONNX a user deploys says what it is ---------------------------------------------------------


def test_the_exported_graph_names_its_classes_shape_and_layout(trained, tmp_path):
    import ultralytics

    from detprune.workflow.onnx_metadata import read_onnx_metadata

    out = tmp_path / "m.onnx"
    assert main(["export", "--model", str(trained), "--imgsz", "64,128", "--out", str(out)]) == 0
    meta = read_onnx_metadata(out)
    assert meta["imgsz"] == "[64, 128]" and meta["detprune.letterbox"] == "square"
    assert meta["detprune.input"] == "images: (1, 3, 64, 128) float"
    assert (
        meta["detprune.output"].startswith("(batch, 4 + nc, anchors)") and "3 class scores" in meta["detprune.output"]
    )
    loaded = ultralytics.YOLO(str(out), task="detect")
    loaded.predict(torch.zeros(1, 3, 64, 128), verbose=False)  # ultralytics reads the metadata on first use
    assert loaded.predictor.model.names == dict(enumerate(CLASSES))


@pytest.mark.parametrize("command", ["eval", "bench"])
def test_an_onnx_graph_given_to_eval_or_bench_says_how_to_score_it(command, tmp_path, capsys):
    graph = tmp_path / "m.onnx"
    graph.write_bytes(b"not read")
    argv = {
        "eval": ["eval", "--model", str(graph), "--data", str(tmp_path)],
        "bench": ["bench", "--model", str(graph), "--pruned", str(graph)],
    }[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "an ONNX graph" in err and ".pt" in err and err.count("\n") == 1


def test_train_takes_the_two_folders_and_says_which_checkpoint_it_points_at(folders, tmp_path, capsys):
    frames, val = folders
    out = tmp_path / "train"
    assert main(["train", "--model", "yolov8n.yaml", "--data", str(frames), "--val-data", str(val), "--epochs", "1",
                 "--imgsz", "64", "--batch", "2", "--workers", "0", "--threads", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "6 train, 3 val images" in printed
    assert "best.pt is the epoch that scored best" in printed and "last.pt" in printed
    assert (out / "train" / "weights" / "last.pt").is_file()


def test_the_letterbox_reaches_scoring(folders, tmp_path):
    frames, _ = folders
    common = ["score", "--model", "yolov8n.yaml", "--random-init", "--data", str(frames), "--criterion", "taylor",
              "--imgsz", "128", "--max-images", "2", "--batch-size", "2", "--device", "cpu"]
    assert main([*common, "--out", str(tmp_path / "square")]) == 0
    assert main([*common, "--letterbox", "rect", "--out", str(tmp_path / "rect")]) == 0
    summary = json.loads((tmp_path / "rect" / "summary.json").read_text())
    assert summary["letterbox"] == "rect"
    square = torch.load(tmp_path / "square" / "scores.pt", weights_only=True)
    rect = torch.load(tmp_path / "rect" / "scores.pt", weights_only=True)
    assert any(not torch.allclose(square[k], rect[k], rtol=1e-3, atol=0) for k in square)  # other input, other scores


def test_export_scores_the_graph_on_the_scale_eval_prints(folders, trained, tmp_path, capsys):
    _, val = folders
    assert main(["export", "--model", str(trained), "--imgsz", "64,128", "--out", str(tmp_path / "m.onnx"),
                 "--eval-data", str(val)]) == 0
    printed = capsys.readouterr().out
    row = next(line.split() for line in printed.splitlines() if line.startswith("fp32 ") and "vs" not in line)
    assert "as 'detprune eval' prints them" in printed and "--split all" in printed
    assert main(["eval", "--model", str(trained), "--data", str(val), "--split", "all", "--imgsz", "64,128",
                 "--device", "cpu", "--json", str(tmp_path / "e.json")]) == 0
    metrics = json.loads((tmp_path / "e.json").read_text())["variants"][0]["metrics"]
    assert row[1:3] == [f"{metrics['mAP']:.3f}", f"{metrics['mAP50']:.3f}"]  # the same images, the same scale
