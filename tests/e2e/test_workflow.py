"""End to end: prune -> fine-tune -> evaluate -> export in one run folder (the demo: test_demo.py)."""

from __future__ import annotations

import json

import pytest
import torch

from detprune.adapters.yolo import YoloAdapter
from detprune.cli import main
from detprune.pruning import conv_channels

from pruning_toys import one_thread  # noqa: F401


@pytest.fixture(scope="module")
def run(synthetic_kitti, tmp_path_factory):
    out = tmp_path_factory.mktemp("workflow") / "run"
    code = main([
        "prune", "--model", "yolov8n.yaml", "--random-init", "--data", str(synthetic_kitti), "--criterion", "saliency",
        "--target-flops", "0.5", "--finetune-epochs", "1", "--finetune-batch", "4", "--imgsz", "96",
        "--batch-size", "4", "--val-count", "4", "--latency-runs", "2", "--device", "cpu", "--out", str(out),
    ])
    assert code == 0
    return out


def test_report_holds_accuracy_cost_and_latency_before_and_after(run):
    report = json.loads((run / "report.json").read_text())
    variants = {v["name"]: v for v in report["variants"]}
    assert set(variants) == {"before", "after"}
    for v in variants.values():
        for key in ("mAP", "mAP50", "AP_small", "AP_medium", "AP_large", "per_class_AP"):
            assert key in v["metrics"]
        assert set(v["metrics"]["kitti"]["per_class"]) == {"Car", "Pedestrian", "Cyclist"}  # KITTI data
        assert v["latency"]["median_ms"] > 0 and v["latency"]["p90_ms"] >= v["latency"]["median_ms"]
    before, after = variants["before"], variants["after"]
    assert abs(after["flops"] / before["flops"] - 0.5) < 0.02
    assert after["params"] < before["params"]
    assert sum(after["channels"].values()) < sum(before["channels"].values())
    markdown = (run / "report.md").read_text()
    assert "AP_small" in markdown or "AP small" in markdown
    for name in ("metrics_vs_cost.png", "original.onnx", "pruned.onnx", "pruned.pt", "prune.json", "config.yaml"):
        assert (run / name).is_file(), name


def test_finetuning_keeps_the_pruned_architecture(run):
    """The checkpoint after fine-tuning has the widths the pruner cut, not the yaml's."""
    pruned_widths = {k: v["after"] for k, v in json.loads((run / "channels.json").read_text()).items()}
    unpruned_widths = {k: v["before"] for k, v in json.loads((run / "channels.json").read_text()).items()}
    model = YoloAdapter().load_checkpoint(run / "pruned.pt")
    widths = conv_channels(model)
    assert widths == pruned_widths
    assert widths != unpruned_widths
    report = json.loads((run / "report.json").read_text())
    after = next(v for v in report["variants"] if v["name"] == "after")
    assert sum(p.numel() for p in model.parameters()) == after["params"]
    assert next(model.parameters()).dtype == torch.float32
    assert (run / "finetune" / "train").is_dir()  # the trainer's run stayed inside the run folder


def test_report_embeds_every_figure_the_run_wrote(run):
    import re

    markdown = (run / "report.md").read_text()
    embedded = re.findall(r"!\[[^\]]+\]\(([^)]+)\)", markdown)
    assert sorted(embedded) == sorted(p.name for p in run.glob("*.png"))
    assert {"channels.png", "metrics_vs_cost.png"} <= set(embedded)
    assert not (run / "channels_kept.png").exists()  # channels.png already shows before and after


def test_fine_tuning_without_data_is_a_one_line_error(tmp_path, capsys):
    code = main(["prune", "--model", "yolov8n.yaml", "--random-init", "--target-flops", "0.5", "--finetune-epochs", "1",
                 "--out", str(tmp_path / "x")])
    assert code == 2
    err = capsys.readouterr().err
    assert "--finetune-epochs needs --data" in err and err.count("\n") == 1
