"""Figures of an accuracy benchmark, drawn on matplotlib's Agg canvas and written atomically.

* :func:`plot_forest`: one row per configuration, its paired difference to the same-budget
  baseline with the bootstrap's 95% interval, one panel per metric, a line at 0 and a dashed
  one at the goal (-1 point).
* :func:`plot_accuracy_vs_flops`: a metric against the share of FLOPs kept, one line per
  configuration across its targets, the baselines as markers of their own.

Every line of the second figure gets a colour and a marker no other has, so it reads in grey too;
the forest plot's rows are named on its axis instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from detprune.errors import BadInputError
from detprune.utils.atomic import atomic_path

FOREST_METRICS = ("mAP50", "AP Pedestrian", "AP Cyclist", "AP_small")
# tab10, then tab20's lighter shades and a few darker ones: distinct hues first
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#000000")
MARKERS = ("o", "^", "s", "D", "v", "P", "X", "<", ">", "h", "p", "*", "H", "d", "8", "1")


def series_styles(count: int) -> list[dict]:
    """``count`` styles, no colour and no marker used twice."""
    if count > min(len(COLORS), len(MARKERS)):
        raise BadInputError(
            f"{count} series in one figure; at most {min(len(COLORS), len(MARKERS))} stay distinguishable"
        )
    return [{"color": COLORS[i], "marker": MARKERS[i]} for i in range(count)]


def _save(fig: Figure, path: str | Path) -> Path:
    FigureCanvasAgg(fig)
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    return path


def _points(value: float | None) -> float | None:
    return None if value is None else 100.0 * value


def forest_figure(results: Mapping[str, Mapping], *, metrics: Sequence[str] = FOREST_METRICS, goal: float = -1.0,
                  title: str | None = None) -> Figure:
    """``results``: {configuration: :func:`~detprune.evaluation.bootstrap.paired_bootstrap` result
    against its same-budget baseline}; differences drawn in AP points."""
    if not results:
        raise BadInputError("no configurations to draw: the forest plot needs at least one bootstrap result")
    names = list(results)
    fig = Figure(figsize=(3.2 * len(metrics) + 1.5, 0.45 * len(names) + 1.6), constrained_layout=True)
    axes = fig.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        for row, name in enumerate(names):
            entry = (results[name].get("metrics") or {}).get(metric)
            if not entry or entry.get("diff") is None:
                ax.text(0.5, row, "undefined", ha="center", va="center", fontsize=8, color="0.4",
                        transform=ax.get_yaxis_transform())  # x in axes fraction: mid-panel, whatever the range
                continue
            diff = _points(entry["diff"])
            low, high = (_points(v) for v in entry["diff_ci"])
            ax.errorbar(
                [diff],
                [row],
                xerr=[[diff - low], [high - diff]] if low is not None else None,
                linestyle="none",
                capsize=3,
                markersize=5,
                marker="o",
                color="black",
            )  # rows are named on the axis
        ax.axvline(0, color="0.2", linewidth=1)
        ax.axvline(goal, color="0.2", linewidth=1, linestyle="--")
        ax.set_title(metric)
        ax.set_xlabel("difference to baseline (AP points)")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(names)), names)
    axes[0].set_ylim(len(names) - 0.5, -0.5)  # first configuration on top
    any_result = next(iter(results.values()))
    caption = f"95% paired bootstrap intervals ({any_result.get('resamples', '?')} resamples); dashed: {goal:+g} point"
    if any_result.get("deviation"):
        caption += f"\ndata: {any_result['deviation']}"
    fig.suptitle(f"{title}\n{caption}" if title else caption, fontsize=9)
    return fig


def plot_forest(results: Mapping[str, Mapping], path: str | Path, **options) -> Path:
    """Draw :func:`forest_figure` and write it to ``path`` (PNG) atomically."""
    return _save(forest_figure(results, **options), path)


def accuracy_flops_figure(series: Mapping[str, Sequence[Sequence[float]]], *,
                          baselines: Mapping[str, Sequence[float]] | None = None, metric: str = "mAP50",
                          title: str | None = None) -> Figure:
    """``series``: {configuration: [(FLOPs kept as a fraction, metric), ...]} over its targets, a point
    may add its interval (low, high); ``baselines``: {name: (FLOPs kept, metric)}. Metrics are
    fractions, drawn in points."""
    baselines = dict(baselines or {})
    if not series and not baselines:
        raise BadInputError("nothing to draw: give at least one configuration or baseline")
    styles = series_styles(len(series) + len(baselines))
    fig = Figure(figsize=(7.5, 5), constrained_layout=True)
    ax = fig.subplots()
    for (name, points), style in zip(series.items(), styles):
        points = sorted((list(p) for p in points), key=lambda p: p[0])
        if not points:
            raise BadInputError(f"configuration {name!r} has no points")
        x = [100 * p[0] for p in points]
        y = [100 * p[1] for p in points]
        bars = [p for p in points if len(p) >= 4]
        if any(not p[2] <= p[1] <= p[3] for p in bars):
            raise BadInputError(f"configuration {name!r}: a point's interval (low, high) does not contain its value")
        ax.plot(x, y, label=name, linewidth=1.5, markersize=6, **style)
        if len(bars) == len(points):
            ax.errorbar(x, y, yerr=[[100 * (p[1] - p[2]) for p in points], [100 * (p[3] - p[1]) for p in points]],
                        linestyle="none", color=style["color"], capsize=2, linewidth=0.8)
    for (name, point), style in zip(baselines.items(), styles[len(series):]):
        ax.plot([100 * point[0]], [100 * point[1]], linestyle="none", markersize=11, label=name, **style)
    ax.set_xlabel("FLOPs kept (%)")
    ax.set_ylabel(f"{metric} (AP points)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def plot_accuracy_vs_flops(series: Mapping[str, Sequence[Sequence[float]]], path: str | Path, **options) -> Path:
    """Draw :func:`accuracy_flops_figure` and write it to ``path`` (PNG) atomically."""
    return _save(accuracy_flops_figure(series, **options), path)
