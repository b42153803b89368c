"""Saliency and Taylor on a real ultralytics YOLOv8n through YoloAdapter, and ``detprune score``."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from detprune.cli import main
from detprune.criteria.saliency import BoxWeightedSaliency
from detprune.criteria.taylor import FirstOrderTaylor
from saliency_toys import make_batch, random_image

yolo = pytest.importorskip("detprune.adapters.yolo")


@pytest.fixture(scope="module")
def adapter():
    return yolo.YoloAdapter()


@pytest.fixture(scope="module")
def model(adapter):  # shared: every test below checks or relies on scoring leaving it unchanged
    torch.manual_seed(0)
    return adapter.prepare_for_pruning(adapter.load("yolov8n.yaml", class_names=["car", "pedestrian"])).eval()


def two_images() -> list:
    images = [random_image(i, 64).float() for i in range(2)]
    return [make_batch(images, [[[4, 8, 40, 44], [44, 30, 52, 46]], [[10, 2, 62, 60]]], [[0, 1], [0]])]


def check_scores(scores, adapter, model):
    points = adapter.activation_points(model)
    assert list(scores) == list(points) and len(points) > 50
    for name, value in scores.items():
        assert value.dtype == torch.float64 and value.shape == (model.get_submodule(name).out_channels,), name
        assert torch.isfinite(value).all() and (value >= 0).all(), name
    assert sum(int((v > 0).sum()) for v in scores.values()) > 0.5 * sum(v.numel() for v in scores.values())


@pytest.mark.parametrize("utility", ["confidence", "loss"])
def test_saliency_on_yolov8n_scores_every_activation_point(adapter, model, utility):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]  # ultralytics freezes DFL's conv
    scores = BoxWeightedSaliency(utility=utility, progress=False).score(adapter, model, two_images())
    check_scores(scores, adapter, model)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # BN statistics untouched
    assert not model.training and [p.requires_grad for p in model.parameters()] == flags


def test_saliency_on_yolov8n_is_independent_of_batch_size(adapter, model):
    batch = two_images()[0]
    together = BoxWeightedSaliency(progress=False).score(adapter, model, [batch])
    singles = [make_batch([batch.images[i]], [batch.boxes[i].tolist()], [batch.labels[i].tolist()]) for i in range(2)]
    apart = BoxWeightedSaliency(progress=False).score(adapter, model, singles)
    for name in together:  # float32 network: agreement to float32 rounding
        torch.testing.assert_close(together[name], apart[name], rtol=1e-4, atol=1e-6 * float(together[name].max()))


def test_taylor_on_yolov8n(adapter, model):
    criterion = FirstOrderTaylor(progress=False)
    scores = criterion.score(adapter, model, two_images())
    check_scores(scores, adapter, model)
    assert set(criterion.norms) == set(scores)  # every ultralytics Conv has its BatchNorm found


def _write_kitti(root, labels: list[str]):
    (root / "image_2").mkdir(parents=True)
    (root / "label_2").mkdir()
    for i, text in enumerate(labels):
        cv2.imwrite(
            str(root / "image_2" / f"{i:06d}.png"),
            (np.random.default_rng(i).random((96, 256, 3)) * 255).astype(np.uint8),
        )
        (root / "label_2" / f"{i:06d}.txt").write_text(text)
    return root


CAR = "Car 0.00 0 -1.57 40.0 30.0 120.0 80.0 1.5 1.6 3.9 0.0 1.6 10.0 -1.57\n"
PEDESTRIAN = "Pedestrian 0.00 0 0.0 180.0 40.0 190.0 70.0 1.7 0.6 0.8 2.0 1.6 12.0 0.0\n"


def test_score_command_writes_scores_summary_and_plots(tmp_path, capsys):
    data = _write_kitti(tmp_path / "kitti", [CAR + PEDESTRIAN, "", CAR])
    out = tmp_path / "run"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("normalize_boxes: false\ncontext-scale: 2.0\n")
    argv = ["score", "--model", "yolov8n.yaml", "--random-init",
            "--data", str(data), "--imgsz", "64", "--batch-size", "2",
            "--max-images", "3", "--out", str(out), "--plot", "--plot-images", "1", "--config", str(recipe),
            "--device", "cpu", "--context", "0.25"]
    assert main(argv) == 0
    scores = torch.load(out / "scores.pt", weights_only=True)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["criterion"] == "saliency"
    assert summary["options"] | {"seed": None} == {
        "context": 0.25,
        "context_scale": 2.0,
        "background": 0.0,
        "seed": None,
        "normalize_boxes": False,
        "overlap": "sum",
        "utility": "confidence",
    }
    assert summary["stats"]["skipped_without_boxes"] == 1 and summary["stats"]["scored"] == 2
    assert len(scores) == len(summary["layers"]) > 50 and all(torch.isfinite(v).all() for v in scores.values())
    assert (out / "plots" / "score_distributions.png").stat().st_size > 0
    assert len(list((out / "plots").glob("saliency_*.png"))) == 1
    assert "top layers" in capsys.readouterr().out

    assert main(argv) == 2  # an existing output needs --exist-ok
    assert "already exists" in capsys.readouterr().err
    assert main([*argv, "--criterion", "taylor", "--exist-ok"]) == 2  # box options are saliency's
    assert "does not apply to criterion 'taylor'" in capsys.readouterr().err
    taylor = argv[: argv.index("--plot")] + ["--criterion", "taylor", "--exist-ok"]
    assert main(taylor) == 0
    assert json.loads((out / "summary.json").read_text())["criterion"] == "taylor"


def test_score_command_without_any_box_is_a_one_line_error(tmp_path, capsys):
    data = _write_kitti(
        tmp_path / "empty", ["", "DontCare -1 -1 -10 10.0 10.0 50.0 50.0 -1 -1 -1 -1000 -1000 -1000 -10\n"]
    )
    assert main(["score", "--model", "yolov8n.yaml", "--random-init",
                 "--data", str(data), "--imgsz", "64", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no object box" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
