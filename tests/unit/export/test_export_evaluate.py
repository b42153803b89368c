"""Accuracy of exported YOLO graphs on ONNX Runtime: FP32 scores what PyTorch scores; INT8 is scored too."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from detprune import cli
from detprune.errors import BadInputError
from detprune.adapters.yolo.exported import yolo_head_info, yolo_postprocess
from detprune.export.evaluate_onnx import evaluate_onnx, format_comparison
from detprune.export.onnx import OnnxModel, export_onnx
from detprune.export.precision import quantize_int8
from pruning_toys import one_thread  # noqa: F401

IMGSZ = 96
METRICS = ("mAP", "mAP50", "mAP75", "AP_small", "AP_medium", "AP_large", "AR100")


@pytest.fixture(scope="module")
def yolo(synthetic_kitti):
    from detprune.adapters import get_adapter
    from detprune.data.loader import load_dataset

    torch.manual_seed(0)
    adapter = get_adapter("yolov8n.yaml")
    return adapter, adapter.load("yolov8n.yaml", class_names=load_dataset(synthetic_kitti).class_names).eval()


@pytest.fixture(scope="module")
def dataset(synthetic_kitti, yolo):
    """Five synthetic frames whose ground truth is their own boxes plus the model's three best detections.

    An untrained model finds none of the real objects, so scored on them alone every AP would
    be 0 and an equality of scores would prove nothing. With its own detections among the
    ground truth the AP lies strictly between 0 and 1 and depends on every score and box.
    """
    from detprune.data.batch import iter_batches
    from detprune.data.loader import load_dataset
    from detprune.data.types import DetectionSet, Sample

    adapter, model = yolo
    real = load_dataset(synthetic_kitti).subset(list(range(5)))
    samples = []
    for batch in iter_batches(real, IMGSZ, len(real)):
        for sample, found in zip(batch.samples, adapter.predict(model, batch)):
            top = np.argsort(-found.scores)[:3]
            samples.append(Sample(sample.image_path, sample.width, sample.height,
                                  np.concatenate([sample.boxes, found.boxes[top]]),
                                  np.concatenate([sample.labels, found.labels[top]])))
    return DetectionSet(real.class_names, samples, name="pseudo")


@pytest.fixture(scope="module")
def fp32_graph(yolo, tmp_path_factory):
    adapter, model = yolo
    path = tmp_path_factory.mktemp("evaluate") / "yolo.onnx"
    return export_onnx(adapter.export_module(model), adapter.example_inputs(model, IMGSZ), path).path


def _close(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, abs_tol=1e-6)


def test_fp32_graph_scores_what_pytorch_scores(yolo, fp32_graph, dataset):
    adapter, model = yolo
    reference = adapter.evaluate(model, dataset, imgsz=IMGSZ, batch_size=2, progress=False)
    assert 0 < reference["mAP50"] < 1 and 0 < reference["mAP"] < 1
    got = evaluate_onnx(fp32_graph, dataset, yolo_postprocess(**yolo_head_info(model)), progress=False)
    for key in METRICS:
        assert _close(got[key], reference[key]), (key, got[key], reference[key])
    assert got["per_class_AP"].keys() == reference["per_class_AP"].keys()
    assert got["num_images"] == len(dataset)


def test_fp32_graph_gives_pytorchs_detections(yolo, fp32_graph, dataset):
    from detprune.data.batch import iter_batches

    adapter, model = yolo
    post = yolo_postprocess(**yolo_head_info(model))
    graph = OnnxModel(fp32_graph)
    for batch in iter_batches(dataset, IMGSZ, 1):
        expected = adapter.predict(model, batch)[0]
        got = post(graph(batch.images.numpy())[0], batch)[0]
        assert len(expected.scores) > 0 and len(got.scores) == len(expected.scores)
        np.testing.assert_allclose(got.scores, expected.scores, atol=1e-5)
        np.testing.assert_allclose(got.boxes, expected.boxes, atol=1e-2)  # original pixels
        np.testing.assert_array_equal(got.labels, expected.labels)


def test_dynamic_batch_graph_gives_the_same_scores(yolo, fp32_graph, dataset, tmp_path):
    adapter, model = yolo
    dyn = export_onnx(adapter.export_module(model), adapter.example_inputs(model, IMGSZ), tmp_path / "dyn.onnx",
                      dynamic_batch=True).path
    post = yolo_postprocess(**yolo_head_info(model))
    fixed = evaluate_onnx(fp32_graph, dataset, post, progress=False)
    batched = evaluate_onnx(dyn, dataset, post, batch_size=3, progress=False)  # 5 images: a short last batch
    for key in METRICS:
        assert _close(batched[key], fixed[key]), key


def test_int8_graph_is_scored(yolo, fp32_graph, dataset, tmp_path):
    from detprune.data.batch import iter_batches

    _, model = yolo
    calibration = [b.images.numpy() for b in iter_batches(dataset, IMGSZ, 1)]
    int8 = quantize_int8(fp32_graph, tmp_path / "yolo.int8.onnx", calibration).path
    post = yolo_postprocess(**yolo_head_info(model))
    metrics = {"fp32": evaluate_onnx(fp32_graph, dataset, post, progress=False),
               "int8": evaluate_onnx(OnnxModel(int8), dataset, post, progress=False)}
    for key in ("mAP", "mAP50"):
        assert 0 <= metrics["int8"][key] <= 1
    table = format_comparison(metrics)
    assert table.splitlines()[0].split()[:4] == ["graph", "mAP", "mAP50", "AP_small"]
    assert table.splitlines()[2].startswith("fp32") and "+0.00" in table.splitlines()[2]


def test_other_input_size_is_refused(yolo, fp32_graph, dataset):
    _, model = yolo
    with pytest.raises(BadInputError, match="takes 96x96 images"):
        evaluate_onnx(fp32_graph, dataset, yolo_postprocess(**yolo_head_info(model)), imgsz=128, progress=False)


def test_export_command_prints_fp32_beside_int8(yolo, dataset, synthetic_kitti, tmp_path, capsys, monkeypatch):
    adapter, model = yolo
    checkpoint = adapter.save(model, tmp_path / "model.pt")
    monkeypatch.setattr(cli, "COMMANDS", ("export",))
    out = tmp_path / "model.int8.onnx"
    code = cli.main(
        [
            "export",
            "--model",
            str(checkpoint),
            "--precision",
            "int8",
            "--imgsz",
            str(IMGSZ),
            "--out",
            str(out),
            "--data",
            str(synthetic_kitti),
            "--calib-images",
            "3",
            "--eval-data",
            str(synthetic_kitti),
            "--eval-images",
            "4",
        ]
    )
    assert code == 0 and out.is_file()
    printed = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in printed.splitlines() if line.startswith(("fp32 ", "int8 "))
            and not line.startswith(("fp32 vs", "int8 vs"))}
    assert set(rows) == {"fp32", "int8"}
    assert all(np.isfinite(float(v)) for v in rows["int8"][1:3])
    assert "accuracy on 4 image(s)" in printed


def test_eval_data_with_other_classes_is_one_line(synthetic_kitti, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", ("export",))
    code = cli.main(["export", "--model", "yolov8n.yaml", "--imgsz", "64", "--out", str(tmp_path / "m.onnx"),
                     "--eval-data", str(synthetic_kitti)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "predicts 80" in err and "\n" not in err
    assert not (tmp_path / "m.onnx").exists()
