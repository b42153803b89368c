"""Figures of a run, drawn with matplotlib's Agg canvas and written atomically.

* :func:`plot_metrics_vs_cost`: one figure of panels, a row per metric (mAP50-95, AP_small,
  AP per class) and a column per cost (FLOPs, latency, parameters); y from zero, so a gap
  of a few thousandths looks as small as it is, and error bars where a summary carries a
  spread over seeds or folds (``metrics["spread"]``, the same keys as the metrics).
* :func:`plot_metric_vs_cost`: one such panel on its own.
* :func:`plot_training_curve`: a validation metric per epoch (a baseline's flattening curve).
* :func:`plot_channels_kept`: output channels per layer, one bar series per variant, layers
  as rows (names readable at the saved size), split into side-by-side columns when long.
* :func:`save_report`: the plots a report has data for, then ``report.json`` and a
  ``report.md`` that embeds them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from detprune.errors import DetpruneError
from detprune.evaluation.report import ModelSummary, Report
from detprune.utils.atomic import atomic_path

# cost name -> (how to read it from a summary, axis label)
COSTS = {
    "flops": (lambda s: None if s.flops is None else s.flops / 1e9, "FLOPs (G)"),
    "latency": (lambda s: None if s.latency is None else s.latency.median_ms, "CPU latency, median (ms)"),
    "params": (lambda s: None if s.params is None else s.params / 1e6, "parameters (M)"),
}
METRIC_LABELS = {
    "mAP": "mAP50-95",
    "mAP50": "mAP50",
    "mAP75": "mAP75",
    "AP_small": "AP_small (COCO, area < 32²)",
    "AP_medium": "AP_medium (COCO, 32²-96²)",
    "AP_large": "AP_large (COCO, area > 96²)",
}
PER_CLASS = "per_class_AP."
DEFAULT_METRICS = ("mAP", "AP_small")
CHANNEL_ROWS_PER_COLUMN = 36  # layers per column of the channels chart: 8 pt names at 0.17 in a row
MARKERS = "o^sDvPX<>h"
FIGURES = {"metrics_vs_cost.png": "Accuracy against cost, one panel per metric and cost",
           "channels_kept.png": "Output channels kept per layer"}


def _save(fig: Figure, path: str | Path) -> Path:
    FigureCanvasAgg(fig)  # render off-screen whatever backend pyplot may have chosen
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    return Path(path)


def metric_label(metric: str, summaries: Mapping[str, ModelSummary] | None = None) -> str:
    """The name a person reads: ``mAP50-95``, ``AP50-95 Car``, KITTI numbers with their protocol."""
    if metric.startswith(PER_CLASS):
        return f"AP50-95 {metric[len(PER_CLASS):]}"
    if metric.startswith("kitti."):
        protocols = sorted(
            {s.metric("kitti.protocol") or "exact" for s in (summaries or {}).values() if s.metric("kitti")}
        )
        return f"KITTI AP_R40 {metric.split('.')[-1]} ({', '.join(protocols) or 'devkit'})"
    return METRIC_LABELS.get(metric, metric)


def _kitti_note(metrics: Sequence[str], summaries: Mapping[str, ModelSummary]) -> str:
    """A title line naming how the labels depart from KITTI's, where a KITTI metric is drawn from such labels."""
    if not any(m.startswith("kitti.") for m in metrics):
        return ""
    found = dict.fromkeys(s.metric("kitti.deviation") for s in summaries.values() if s.metric("kitti.deviation"))
    return f"\nKITTI labels: {'; '.join(found)}" if found else ""


def _number(value) -> float | None:
    return (
        float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        else None
    )


def _point(summary: ModelSummary, metric: str, cost: str) -> tuple[float, float, float | None] | None:
    """(cost, metric, its spread or None) of one summary; None where either number is missing."""
    x, y = COSTS[cost][0](summary), _number(summary.metric(metric))
    if x is None or y is None:
        return None
    return x, y, _number(summary.metric(f"spread.{metric}"))


def _styles(summaries: Mapping[str, ModelSummary], series_key: str, baseline: str | None) -> dict[str, dict]:
    """{series: matplotlib style}: the same colour and marker for a series in every panel."""
    styles: dict[str, dict] = {}
    for name, summary in summaries.items():
        group = _series(name, summary, series_key)
        if group not in styles:
            rank = len(styles)
            styles[group] = {
                "color": f"C{rank % 10}",
                "marker": "*" if name == baseline else MARKERS[rank % len(MARKERS)],
                "markersize": 12 if name == baseline else 7,
            }
    return styles


def _series(name: str, summary: ModelSummary, series_key: str) -> str:
    """Variants that share ``info[series_key]`` (one criterion at several ratios) form one series."""
    group = summary.info.get(series_key)
    return name if group is None else str(group)


def _draw_panel(ax, summaries: Mapping[str, ModelSummary], metric: str, cost: str, series_key: str,
                styles: Mapping[str, dict]) -> None:
    """Points (with error bars where a spread exists) of every series; axes from zero."""
    series: dict[str, list[tuple[float, float, float | None]]] = {}
    for name, summary in summaries.items():
        point = _point(summary, metric, cost)
        if point is not None:
            series.setdefault(_series(name, summary, series_key), []).append(point)
    top = right = 0.0
    for group, points in series.items():
        points.sort()
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        errors = [p[2] or 0.0 for p in points]
        style = styles[group]
        if any(p[2] is not None for p in points):
            ax.errorbar(
                xs, ys, yerr=errors, capsize=3, linestyle="-" if len(points) > 1 else "none", label=group, **style
            )
        else:
            ax.plot(xs, ys, linestyle="-" if len(points) > 1 else "none", label=group, **style)
        top = max(top, *(y + e for y, e in zip(ys, errors)))
        right = max(right, *xs)
    ax.set_ylim(0, max(top * 1.15, 0.05))  # from zero: the axis does not magnify a small gap
    ax.set_xlim(0, right * 1.1 or 1.0)
    ax.grid(alpha=0.3)


def _summaries(report: Mapping[str, ModelSummary] | Report, baseline: str | None) -> tuple[dict, str | None]:
    if isinstance(report, Report):
        return report.variants, baseline or report.baseline
    return dict(report), baseline


def plot_metric_vs_cost(
    summaries: Mapping[str, ModelSummary] | Report,
    path: str | Path,
    *,
    metric: str = "mAP",
    cost: str = "flops",
    series_key: str = "criterion",
    baseline: str | None = None,
    title: str | None = None,
) -> Path:
    """``metric`` (a dotted path into the metrics, e.g. ``kitti.mean.moderate``) against ``cost``.

    Variants whose ``info[series_key]`` agree (one criterion at several ratios) are joined by
    a line in order of cost; the baseline is a star.
    """
    if cost not in COSTS:
        raise DetpruneError(f"unknown cost '{cost}'; choose one of {', '.join(COSTS)}")
    summaries, baseline = _summaries(summaries, baseline)
    if not any(_point(s, metric, cost) for s in summaries.values()):
        raise DetpruneError(f"no variant has both '{metric}' and {cost}; nothing to plot")
    fig = Figure(figsize=(6.0, 4.5))
    ax = fig.add_subplot()
    _draw_panel(ax, summaries, metric, cost, series_key, _styles(summaries, series_key, baseline))
    label = metric_label(metric, summaries)
    ax.set_xlabel(COSTS[cost][1])
    ax.set_ylabel(label)
    ax.set_title((title or f"{label} vs {COSTS[cost][1]}") + _kitti_note([metric], summaries), fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, path)


def panel_metrics(summaries: Mapping[str, ModelSummary], metrics: Sequence[str] = DEFAULT_METRICS) -> list[str]:
    """``metrics`` then AP per class (``per_class_AP.<class>``), those some variant has."""
    classes: dict[str, None] = {}
    for summary in summaries.values():
        classes.update(dict.fromkeys(summary.metric("per_class_AP") or {}))
    wanted = [*metrics, *(PER_CLASS + c for c in classes)]
    return [m for m in wanted if any(_number(s.metric(m)) is not None for s in summaries.values())]


def metrics_figure(
    summaries: Mapping[str, ModelSummary] | Report,
    *,
    metrics: Sequence[str] | None = None,
    costs: Sequence[str] | None = None,
    series_key: str = "criterion",
    baseline: str | None = None,
    title: str | None = None,
) -> Figure:
    """The panel figure (rows: metrics, columns: costs), one legend for all panels."""
    summaries, baseline = _summaries(summaries, baseline)
    metrics = list(metrics) if metrics is not None else panel_metrics(summaries)
    unknown = [c for c in (costs or ()) if c not in COSTS]
    if unknown:
        raise DetpruneError(f"unknown cost '{unknown[0]}'; choose one of {', '.join(COSTS)}")
    costs = [c for c in (costs or COSTS) if any(COSTS[c][0](s) is not None for s in summaries.values())]
    if not metrics or not costs:
        raise DetpruneError("no variant has both a metric and a cost; nothing to plot")
    styles = _styles(summaries, series_key, baseline)
    fig = Figure(figsize=(3.3 * len(costs), 2.4 * len(metrics) + 1.0), layout="constrained")
    axes = fig.subplots(len(metrics), len(costs), squeeze=False, sharey="row")
    for row, metric in enumerate(metrics):
        for col, cost in enumerate(costs):
            ax = axes[row][col]
            _draw_panel(ax, summaries, metric, cost, series_key, styles)
            if col == 0:
                ax.set_ylabel(metric_label(metric, summaries))
            if row == len(metrics) - 1:
                ax.set_xlabel(COSTS[cost][1])
    handles = [Line2D([], [], linestyle="none", label=group, **style) for group, style in styles.items()]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4), fontsize=9, frameon=False)
    spread = any(isinstance(s.metric("spread"), Mapping) for s in summaries.values())
    fig.suptitle((title or "Accuracy on the evaluation images vs cost"
                  + (", error bars: spread over runs" if spread else " (one run per model: no error bars)"))
                 + _kitti_note(metrics, summaries))
    return fig


def plot_metrics_vs_cost(summaries: Mapping[str, ModelSummary] | Report, path: str | Path, **options) -> Path:
    """:func:`metrics_figure` written to ``path``."""
    return _save(metrics_figure(summaries, **options), path)


def plot_training_curve(curve: Sequence[float], path: str | Path, *, stop: bool = False,
                        label: str = "val mAP50-95", title: str = "Baseline training") -> Path:
    """A validation metric per epoch (y from zero); ``stop`` marks the last epoch as where a rule stopped."""
    if not curve:
        raise DetpruneError("no epochs to plot")
    epochs = list(range(1, len(curve) + 1))
    fig = Figure(figsize=(6.0, 3.2), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(epochs, list(curve), marker="o", markersize=3)
    if stop:
        ax.axvline(epochs[-1], color="0.5", linestyle="--", label=f"flat: stopped after epoch {epochs[-1]}")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_ylim(0, max(max(curve) * 1.15, 0.05))
    ax.set_xlim(0.5, len(curve) + 0.5)
    ax.set_xlabel("epoch")
    ax.set_ylabel(label)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _distinct(channels: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    """Variants with the same widths drawn once, named together (e.g. two unpruned baselines)."""
    merged: dict[str, dict[str, int]] = {}
    for name, layers in channels.items():
        same = next((label for label, widths in merged.items() if widths == dict(layers)), None)
        if same is None:
            merged[name] = dict(layers)
        else:
            merged[f"{same} = {name}"] = merged.pop(same)
    return merged


def plot_channels_kept(
    channels: Mapping[str, Mapping[str, int]], path: str | Path, *, title: str | None = None
) -> Path:
    """:func:`channels_figure` written to ``path``."""
    return _save(channels_figure(channels, title=title), path)


def channels_figure(channels: Mapping[str, Mapping[str, int]], *, title: str | None = None) -> Figure:
    """Output channels per layer (network order of the first variant), one colour per variant.

    ``channels`` maps a variant name (e.g. ``before``, ``after``) to ``{layer: channels}``. The
    first variant is the wide pale bar behind the others, so what was cut stands out; layers
    are rows, read top to bottom, in columns of :data:`CHANNEL_ROWS_PER_COLUMN`.
    """
    channels = _distinct({name: layers for name, layers in channels.items() if layers})
    if not channels:
        raise DetpruneError("no channel counts to plot; give at least one variant with {layer: channels}")
    layers = list(next(iter(channels.values())))
    for layer_map in channels.values():
        layers += [layer for layer in layer_map if layer not in layers]
    columns = math.ceil(len(layers) / CHANNEL_ROWS_PER_COLUMN)
    rows = math.ceil(len(layers) / columns)
    widest = max(max(m.values(), default=0) for m in channels.values())
    fig = Figure(figsize=(4.6 * columns + 0.4, 0.17 * rows + 1.3), layout="constrained")
    axes = fig.subplots(1, columns, squeeze=False)[0]
    others = max(len(channels) - 1, 1)
    for col, ax in enumerate(axes):
        chunk = layers[col * rows:(col + 1) * rows]
        y = list(range(len(chunk)))
        for rank, (name, layer_map) in enumerate(channels.items()):
            widths = [layer_map.get(layer, 0) for layer in chunk]
            if rank == 0:
                ax.barh(y, widths, height=0.85, color="0.8", label=name)
            else:
                height = 0.7 / others
                ax.barh(
                    [i - 0.35 + (rank - 0.5) * height for i in y],
                    widths,
                    height=height,
                    color=f"C{rank - 1}",
                    label=name,
                )
        ax.set_yticks(y)
        ax.set_yticklabels(chunk, fontsize=8)
        ax.set_ylim(rows - 0.5, -0.5)  # network order top to bottom; columns share the row height
        ax.set_xlim(0, widest * 1.05 or 1)
        ax.set_xlabel("output channels", fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="x", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4), fontsize=9, frameon=False)
    fig.suptitle(title or "Output channels per layer")
    return fig


def save_report_plots(report: Report, out_dir: str | Path, *, metrics: Sequence[str] = DEFAULT_METRICS,
                      channels: bool = True) -> list[Path]:
    """Write every plot the report has data for into ``out_dir``; returns the files written.

    ``channels=False`` leaves out the channels chart (for a caller that draws its own).
    """
    out_dir = Path(out_dir)
    written = []
    have = [s for s in report.variants.values() if any(_point(s, m, c) for m in metrics for c in COSTS)]
    if len(have) >= 2:
        chosen = panel_metrics(report.variants, metrics)
        written.append(plot_metrics_vs_cost(report, out_dir / "metrics_vs_cost.png", metrics=chosen))
    widths = {name: s.channels for name, s in report.variants.items() if s.channels}
    if channels and widths:
        written.append(plot_channels_kept(widths, out_dir / "channels_kept.png"))
    return written


def save_report(report: Report, out_dir: str | Path, *, figures: Mapping[str, str] | None = None,
                channels: bool = True) -> dict:
    """The report's plots, then ``report.json`` and a ``report.md`` embedding them.

    ``figures`` ({file in ``out_dir``: caption}) adds pictures other code draws into the same
    folder; ``channels`` as :func:`save_report_plots`. Returns {"json": path, "markdown": path,
    "figures": [paths of the plots drawn here]}.
    """
    drawn = save_report_plots(report, out_dir, channels=channels)
    captions = {p.name: FIGURES.get(p.name, p.stem) for p in drawn}
    return {**report.save(out_dir, {**captions, **(figures or {})}), "figures": drawn}
