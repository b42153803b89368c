"""The run report: JSON round trip, Markdown and terminal tables that carry the numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detprune.data.types import DetectionSet, Detections, Sample
from detprune.errors import BadInputError
from detprune.evaluation import Latency, ModelSummary, Report, evaluate_detections

CLASSES = ["Car", "Pedestrian", "Cyclist"]


@pytest.fixture(scope="module")
def metrics_pair() -> tuple[dict, dict]:
    """Real protocol output for a perfect model and one that misses half the cars."""
    boxes = np.array([[10, 100, 110, 160], [130, 100, 230, 160], [250, 100, 350, 160], [370, 100, 470, 160],
                      [500, 80, 540, 180]], np.float32)
    labels = [0, 0, 0, 0, 1]
    data = DetectionSet(CLASSES, [Sample("000000.png", 1242, 375, boxes, labels)])
    scores = np.linspace(0.9, 0.5, 5)
    perfect = Detections(boxes, scores, labels)
    missing = Detections(boxes[[0, 1, 4]], scores[[0, 1, 4]], [0, 0, 1])
    # the exact-recall KITTI protocol: half the cars found gives 0.5 (the devkit's would be 1/40)
    return (evaluate_detections(data, [perfect], kitti_protocol="exact"),
            evaluate_detections(data, [missing], kitti_protocol="exact"))


@pytest.fixture
def report(metrics_pair) -> Report:
    before_metrics, after_metrics = metrics_pair
    before = ModelSummary(before_metrics, params=3_000_000, flops=8.0e9,
                          latency=Latency(12.5, 14.0, "onnxruntime-cpu"),
                          channels={"model.0.conv": 16, "model.1.conv": 32, "model.2.cv1.conv": 64})
    after = ModelSummary(after_metrics, params=np.int64(1_500_000), flops=4.0e9,
                         latency={"median_ms": 7.5, "p90_ms": 9.0, "backend": "onnxruntime-cpu"},
                         channels={"model.0.conv": 16, "model.1.conv": 16, "model.2.cv1.conv": 48},
                         info={"checkpoint": "runs/pruned.pt"})
    return Report.from_pair(before, after, run_info={"criterion": "saliency", "target": {"flops": 0.5}, "seed": 0})


def test_json_round_trip(report, tmp_path):
    paths = report.save(tmp_path / "run")
    assert paths["json"].name == "report.json" and paths["markdown"].name == "report.md"
    loaded = Report.load(tmp_path / "run")
    assert loaded == report
    assert loaded.variants["after"].latency == Latency(7.5, 9.0, "onnxruntime-cpu")
    assert loaded.variants["after"].params == 1_500_000
    assert list(loaded.variants["before"].channels) == ["model.0.conv", "model.1.conv", "model.2.cv1.conv"]
    assert loaded.to_json() == report.to_json()
    data = json.loads(paths["json"].read_text())
    assert set(data) == {"format", "baseline", "run", "variants"}
    assert [v["name"] for v in data["variants"]] == ["before", "after"]
    assert set(data["variants"][0]) == {"name", "metrics", "params", "flops", "latency", "channels", "info"}
    assert not list(tmp_path.joinpath("run").glob(".*"))  # no temporary files left behind


def test_markdown_carries_the_numbers(report, metrics_pair):
    before, after = metrics_pair
    md = report.to_markdown()
    assert "| Metric | before | after | Δ after |" in md
    assert f"| mAP50-95 | {before['mAP']:.3f} | {after['mAP']:.3f} | {after['mAP'] - before['mAP']:+.3f} |" in md
    assert "| Parameters | 3.00 M | 1.50 M | -50.0% |" in md
    assert "| FLOPs | 8.00 G | 4.00 G | -50.0% |" in md
    assert "| Latency median (ms) | 12.50 | 7.50 | -40.0% |" in md
    car_kitti = after["kitti"]["per_class"]["Car"]["moderate"]
    assert car_kitti == pytest.approx(0.5)
    assert f"| Car | moderate | 1.000 | {car_kitti:.3f} | {car_kitti - 1:+.3f} |" in md
    assert "## KITTI AP_R40 (exact)" in md and "| KITTI AP_R40 (exact) moderate | 1.000 |" in md
    assert f"| Car | {before['per_class_AP']['Car']:.3f} | {after['per_class_AP']['Car']:.3f} |" in md
    assert "| Channels | 112 (100%) | 80 (71%) |" in md
    assert "| model.1.conv | 32 (100%) | 16 (50%) |" in md
    assert md.index("model.1.conv | 32") < md.index("model.2.cv1.conv | 64")  # most pruned first
    assert "`saliency`" in md and "flops=`0.5`" in md


def test_terminal_table(report):
    table = report.to_table().splitlines()
    assert table[0].split() == ["Metric", "before", "after", "Δ", "after"]
    assert any(line.split()[:1] == ["mAP50-95"] for line in table)
    assert any("-50.0%" in line and line.startswith("FLOPs") for line in table)
    # both models timed on one backend: named once under the table, not in a row as wide as it
    assert table[-1] == "latency: onnxruntime-cpu" and not any(line.startswith("Latency backend") for line in table)


def test_several_variants_compare_to_the_baseline(metrics_pair):
    before, after = metrics_pair
    report = Report({"before": ModelSummary(before, flops=8e9)})
    report.add("magnitude", ModelSummary(after, flops=4e9)).add("saliency", ModelSummary(before, flops=4e9))
    assert report.baseline == "before" and report.compared == ["magnitude", "saliency"]
    header = report.to_markdown().splitlines()
    assert "| Metric | before | magnitude | saliency | Δ magnitude | Δ saliency |" in header


def test_missing_values_render_as_dashes():
    report = Report({"only": ModelSummary({"mAP": 0.25, "AP_small": None})})
    md = report.to_markdown()
    assert "| mAP50-95 | 0.250 |" in md and "| AP small (area < 32²) | – |" in md
    assert "Channels kept" not in md and "KITTI" not in md
    assert Report().to_table() == "no models evaluated"


def test_non_finite_values_become_null(tmp_path):
    report = Report({"a": ModelSummary({"mAP": float("nan")}, info={"path": tmp_path})})
    data = json.loads(report.to_json())
    assert data["variants"][0]["metrics"]["mAP"] is None
    assert data["variants"][0]["info"]["path"] == str(tmp_path)


def test_load_rejects_other_files(tmp_path):
    (tmp_path / "report.json").write_text("{not json")
    with pytest.raises(BadInputError, match="report.json: not valid JSON"):
        Report.load(tmp_path)
    (tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(BadInputError, match="not a detprune report"):
        Report.load(tmp_path / "other.json")
    with pytest.raises(BadInputError, match="no such report"):
        Report.load(tmp_path / "missing.json")


def test_deltas_against_a_named_baseline(tmp_path):
    """The reference is the model trained as long as the pruned ones, not the first row."""
    report = Report(baseline="same budget")
    report.add("unpruned", ModelSummary({"mAP": 0.30}, params=2_000_000, info={"epochs": "30"}))
    report.add("same budget", ModelSummary({"mAP": 0.34}, params=2_000_000, info={"epochs": "30 + 8"}))
    report.add("pruned", ModelSummary({"mAP": 0.31}, params=1_000_000,
                                      info={"epochs": "30 + 8", "allocation": "global", "distillation": "off"}))
    assert report.baseline == "same budget" and report.compared == ["unpruned", "pruned"]
    md = report.to_markdown()
    assert "| Metric | unpruned | same budget | pruned | Δ unpruned | Δ pruned |" in md
    # 0.30 - 0.34 = -0.040 and 0.31 - 0.34 = -0.030; 1 M against 2 M params = -50%
    assert "| mAP50-95 | 0.300 | 0.340 | 0.310 | -0.040 | -0.030 |" in md
    assert "| Parameters | 2.00 M | 2.00 M | 1.00 M | +0.0% | -50.0% |" in md
    assert "| Epochs trained | 30 | 30 + 8 | 30 + 8 |  |  |" in md
    assert "| Allocation | – | – | global |  |  |" in md and "| Distillation | – | – | off |  |  |" in md
    assert "each model minus `same budget`" in md
    report.save(tmp_path)
    loaded = Report.load(tmp_path)
    assert loaded.baseline == "same budget" and loaded == report


def test_markdown_embeds_the_figures_it_is_given():
    report = Report({"only": ModelSummary({"mAP": 0.25})}, run_info={"train": {"lr": 0.01, "warmup": {"epochs": 1}}})
    md = report.to_markdown({"metrics_vs_cost.png": "accuracy vs cost", "sub/curve.png": "curve"})
    assert "![accuracy vs cost](metrics_vs_cost.png)" in md and "![curve](sub/curve.png)" in md
    assert md.index("## Summary") < md.index("## Figures")
    assert "## Figures" not in report.to_markdown()
    assert "- **train**: lr=`0.01`, warmup=(epochs=`1`)" in md  # nested settings stay readable
