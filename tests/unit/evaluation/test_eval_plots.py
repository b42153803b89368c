"""Plots are real PNGs, written atomically, and refuse to draw nothing."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest

from detprune.errors import DetpruneError
from detprune.evaluation import Latency, ModelSummary, Report
from detprune.evaluation.plots import (
    CHANNEL_ROWS_PER_COLUMN,
    channels_figure,
    metrics_figure,
    plot_channels_kept,
    plot_metric_vs_cost,
    plot_training_curve,
    save_report,
    save_report_plots,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png_with_ink(path) -> bool:
    if path.read_bytes()[:8] != PNG_MAGIC:
        return False
    pixels = matplotlib.image.imread(path)
    return pixels.ndim == 3 and np.ptp(pixels[..., :3]) > 0.5  # not a blank canvas


def _variants() -> Report:
    layers = {f"model.{i}.conv": 16 * (1 + i % 4) for i in range(12)}
    report = Report(
        {
            "before": ModelSummary(
                {"mAP": 0.40, "AP_small": 0.20}, flops=8e9, latency=Latency(10, 12, "ort"), channels=layers
            )
        }
    )
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
    out = plot_channels_kept(
        {"before": {"a": 32, "b": 64}, "after": {"a": 16, "b": 48}}, tmp_path / "sub" / "channels.png"
    )
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
    assert sorted(p.name for p in written) == ["channels_kept.png", "metrics_vs_cost.png"]  # one panel figure
    assert all(_is_png_with_ink(p) for p in written)
    # a single model without costs: only what it has data for
    lone = Report({"before": ModelSummary({"mAP": 0.4}, channels={"a": 8})})
    assert [p.name for p in save_report_plots(lone, tmp_path / "lone")] == ["channels_kept.png"]


def test_panel_figure_rows_are_metrics_columns_are_costs():
    report = _variants()
    report.variants["before"].metrics["per_class_AP"] = {"Car": 0.5, "Cyclist": 0.3}
    fig = metrics_figure(report)
    # rows: mAP50-95, AP_small, AP Car, AP Cyclist (only "before" has per-class AP);
    # columns: FLOPs and latency (no variant has a parameter count)
    axes = fig.axes
    assert len(axes) == 4 * 2
    assert [axes[2 * r].get_ylabel() for r in range(4)] == [
        "mAP50-95",
        "AP_small (COCO, area < 32²)",
        "AP50-95 Car",
        "AP50-95 Cyclist",
    ]
    assert [axes[-2].get_xlabel(), axes[-1].get_xlabel()] == ["FLOPs (G)", "CPU latency, median (ms)"]
    assert all(ax.get_ylim()[0] == 0 for ax in axes)  # y from zero: a small gap is drawn small
    assert all(ax.get_ylim()[1] >= 0.4 for ax in axes[:2])  # and the top covers the best point (mAP 0.40)
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["before", "saliency", "magnitude"]  # each name once


def test_error_bars_only_where_a_spread_exists():
    from matplotlib.container import ErrorbarContainer

    report = _variants()
    plain = metrics_figure(report, metrics=["mAP"], costs=["flops"])
    assert not any(isinstance(c, ErrorbarContainer) for c in plain.axes[0].containers)
    # the saliency series carries a spread over seeds (0.01 around each mAP)
    for name, summary in report.variants.items():
        if name.startswith("saliency"):
            summary.metrics["spread"] = {"mAP": 0.01}
    spread = metrics_figure(report, metrics=["mAP"], costs=["flops"])
    bars = [c for c in spread.axes[0].containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 1 and bars[0].get_label() == "saliency"
    ((segments,),) = [bars[0].lines[2]]
    heights = sorted(round(float(s[1][1] - s[0][1]), 6) for s in segments.get_segments())
    assert heights == [0.02, 0.02, 0.02]  # +-0.01 at each of the three ratios


def test_channels_chart_is_readable_at_its_size(tmp_path):
    layers = {f"model.{i}.cv{i % 3}.conv": 16 * (1 + i % 4) for i in range(72)}  # yolov8n has 72
    cut = {k: v // 2 for k, v in layers.items()}
    fig = channels_figure({"baseline": layers, "baseline, same budget": dict(layers), "saliency": cut})
    assert len(fig.axes) == -(-72 // CHANNEL_ROWS_PER_COLUMN)  # side-by-side columns of layer rows
    names = [t.get_text() for ax in fig.axes for t in ax.get_yticklabels()]
    assert names == list(layers)  # every layer named, in network order
    assert min(t.get_fontsize() for ax in fig.axes for t in ax.get_yticklabels()) >= 8
    (legend,) = fig.legends  # identical widths drawn once, both names on it
    assert [t.get_text() for t in legend.get_texts()] == ["baseline = baseline, same budget", "saliency"]
    out = plot_channels_kept({"baseline": layers, "saliency": cut}, tmp_path / "channels.png")
    assert _is_png_with_ink(out)


def test_training_curve(tmp_path):
    out = plot_training_curve([0.01, 0.05, 0.08, 0.081], tmp_path / "curve.png", stop=True)
    assert _is_png_with_ink(out)
    with pytest.raises(DetpruneError, match="no epochs"):
        plot_training_curve([], tmp_path / "none.png")


def test_saved_report_embeds_every_figure(tmp_path):
    import re

    plot_training_curve([0.1, 0.2], tmp_path / "curve.png")  # drawn by other code, passed in by name
    paths = save_report(_variants(), tmp_path, figures={"curve.png": "training curve"})
    markdown = paths["markdown"].read_text()
    embedded = re.findall(r"!\[[^\]]+\]\(([^)]+)\)", markdown)
    assert sorted(embedded) == sorted(p.name for p in tmp_path.glob("*.png"))
    assert "![training curve](curve.png)" in markdown


def test_prune_channels_chart_is_readable_at_its_size(tmp_path):
    from detprune.pruning.plots import ROWS_PER_COLUMN, channels_figure as prune_channels_figure, plot_channels

    before = {f"model.{i}.conv": 32 for i in range(72)}
    after = {name: 16 if i % 2 else 32 for i, name in enumerate(before)}
    fig = prune_channels_figure(before, after)
    assert len(fig.axes) == -(-72 // ROWS_PER_COLUMN)
    assert [t.get_text() for ax in fig.axes for t in ax.get_yticklabels()] == list(before)
    assert min(t.get_fontsize() for ax in fig.axes for t in [*ax.get_yticklabels(), *ax.texts]) >= 8
    # the kept share beside each bar: half the layers keep 16 of 32
    assert sorted({t.get_text() for ax in fig.axes for t in ax.texts}) == ["100%", "50%"]
    assert "1728/2304 channels kept (75%)" in fig.get_suptitle()  # 36 x 32 + 36 x 16 of 72 x 32
    assert _is_png_with_ink(plot_channels(before, after, tmp_path / "channels.png"))
