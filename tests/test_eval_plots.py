"""Plots are real PNGs, written atomically, and refuse to draw nothing."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest

from detprune.errors import DetpruneError
from detprune.evaluation import Latency, ModelSummary, Report
from detprune.evaluation.plots import plot_channels_kept, plot_metric_vs_cost, save_report_plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png_with_ink(path) -> bool:
    if path.read_bytes()[:8] != PNG_MAGIC:
        return False
    pixels = matplotlib.image.imread(path)
    return pixels.ndim == 3 and np.ptp(pixels[..., :3]) > 0.5  # not a blank canvas


def _variants() -> Report:
    layers = {f"model.{i}.conv": 16 * (1 + i % 4) for i in range(12)}
    report = Report({"before": ModelSummary({"mAP": 0.40, "AP_small": 0.20}, flops=8e9, latency=Latency(10, 12, "ort"), channels=layers)})
    for ratio in (0.3, 0.5, 0.7):
        for criterion, penalty in (("saliency", 0.05), ("magnitude", 0.10)):
            kept = {k: max(8, int(v * (1 - ratio))) for k, v in layers.items()}
            report.add(f"{criterion}@{ratio}", ModelSummary(
                {"mAP": 0.40 - penalty * ratio, "AP_small": 0.20 - 2 * penalty * ratio},
                flops=8e9 * (1 - ratio), latency=Latency(10 * (1 - ratio / 2), 12, "ort"),
                channels=kept, info={"criterion": criterion},
            ))
    return report


def test_channels_plot(tmp_path):
    out = plot_channels_kept({"before": {"a": 32, "b": 64}, "after": {"a": 16, "b": 48}}, tmp_path / "sub" / "channels.png")
    assert out.exists() and _is_png_with_ink(out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["channels.png"]  # no temporary left
    with pytest.raises(DetpruneError, match="no channel counts"):
        plot_channels_kept({"before": {}}, tmp_path / "none.png")


def test_metric_vs_cost_plot(tmp_path):
    report = _variants()
    out = plot_metric_vs_cost(report, tmp_path / "map_vs_flops.png", metric="mAP", cost="flops")
    assert _is_png_with_ink(out)
    out = plot_metric_vs_cost(report, tmp_path / "small_vs_latency.png", metric="AP_small", cost="latency")
    assert _is_png_with_ink(out)
    with pytest.raises(DetpruneError, match="unknown cost"):
        plot_metric_vs_cost(report, tmp_path / "x.png", cost="watts")
    with pytest.raises(DetpruneError, match="no variant has both"):
        plot_metric_vs_cost(report, tmp_path / "x.png", metric="kitti.mean.moderate")
    assert not (tmp_path / "x.png").exists()


def test_report_plots(tmp_path):
    written = save_report_plots(_variants(), tmp_path)
    names = sorted(p.name for p in written)
    assert names == sorted(["channels_kept.png", "mAP_vs_flops.png", "AP_small_vs_flops.png",
                            "mAP_vs_latency.png", "AP_small_vs_latency.png"])
    assert all(_is_png_with_ink(p) for p in written)
    # a single model without costs: only what it has data for
    lone = Report({"before": ModelSummary({"mAP": 0.4}, channels={"a": 8})})
    assert [p.name for p in save_report_plots(lone, tmp_path / "lone")] == ["channels_kept.png"]
