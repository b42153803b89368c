"""Figures of a run, drawn with matplotlib's Agg canvas and written atomically.

* :func:`plot_channels_kept`: output channels per layer, one bar series per variant.
* :func:`plot_metric_vs_cost`: a metric against FLOPs, parameters or latency for several
  variants, one line per series (e.g. per criterion), the baseline marked.
* :func:`save_report_plots`: both, from a :class:`~detprune.evaluation.report.Report`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from detprune.errors import DetpruneError
from detprune.evaluation.report import ModelSummary, Report
from detprune.utils.atomic import atomic_path

# cost name -> (how to read it from a summary, axis label)
COSTS = {
    "flops": (lambda s: None if s.flops is None else s.flops / 1e9, "GFLOPs"),
    "params": (lambda s: None if s.params is None else s.params / 1e6, "parameters (M)"),
    "latency": (lambda s: None if s.latency is None else s.latency.median_ms, "median latency (ms)"),
}


def _save(fig: Figure, path: str | Path) -> Path:
    FigureCanvasAgg(fig)  # render off-screen whatever backend pyplot may have chosen
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    return Path(path)


def plot_channels_kept(channels: Mapping[str, Mapping[str, int]], path: str | Path, *, title: str | None = None) -> Path:
    """Bar chart of output channels per layer (network order of the first variant), one colour per variant.

    ``channels`` maps a variant name (e.g. ``before``, ``after``) to ``{layer: channels}``.
    The first variant is drawn as the wide background bar so that what was cut stands out.
    """
    channels = {name: dict(layers) for name, layers in channels.items() if layers}
    if not channels:
        raise DetpruneError("no channel counts to plot; give at least one variant with {layer: channels}")
    layers = list(next(iter(channels.values())))
    for layer_map in channels.values():
        layers += [layer for layer in layer_map if layer not in layers]
    x = list(range(len(layers)))
    fig = Figure(figsize=(max(6.0, 0.18 * len(layers) + 2), 4.0))
    ax = fig.add_subplot()
    width = 0.85
    for rank, (name, layer_map) in enumerate(channels.items()):
        heights = [layer_map.get(layer, 0) for layer in layers]
        bar_width = width if rank == 0 else width * 0.6 / (len(channels) - 1)
        offset = 0.0 if rank == 0 else -width * 0.3 + (rank - 0.5) * bar_width
        ax.bar([i + offset for i in x], heights, width=bar_width, label=name, alpha=0.35 if rank == 0 else 0.9)
    ax.set_xticks(x)
    ax.set_xticklabels(layers, rotation=90, fontsize=6 if len(layers) > 30 else 8)
    ax.set_xlim(-0.6, len(layers) - 0.4)
    ax.set_ylabel("output channels")
    ax.set_title(title or "Channels kept per layer")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


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
    """Scatter ``metric`` (dotted path into the metrics, e.g. ``kitti.mean.moderate``) against ``cost``.

    Variants whose ``info[series_key]`` agree (e.g. one criterion at several ratios) are
    joined by a line in order of cost; the baseline is drawn as a star.
    """
    if cost not in COSTS:
        raise DetpruneError(f"unknown cost '{cost}'; choose one of {', '.join(COSTS)}")
    if isinstance(summaries, Report):
        baseline = baseline or summaries.baseline
        summaries = summaries.variants
    read_cost, cost_label = COSTS[cost]
    points = {
        name: (read_cost(s), s.metric(metric), s.info.get(series_key))
        for name, s in summaries.items()
        if read_cost(s) is not None and isinstance(s.metric(metric), (int, float))
    }
    if not points:
        raise DetpruneError(f"no variant has both '{metric}' and {cost}; nothing to plot")

    fig = Figure(figsize=(6.0, 4.5))
    ax = fig.add_subplot()
    series: dict[str, list[tuple[float, float]]] = {}
    for name, (x, y, group) in points.items():
        if name == baseline:
            ax.scatter([x], [y], marker="*", s=160, color="black", zorder=3, label=f"{name} (baseline)")
        else:
            series.setdefault(str(group) if group is not None else "variants", []).append((x, y))
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    for group, xy in series.items():
        xy.sort()
        ax.plot([p[0] for p in xy], [p[1] for p in xy], marker="o", label=group)
    ax.margins(0.12)  # room for the labels of the outermost points
    ax.set_xlabel(cost_label)
    label = metric
    if metric.startswith("kitti."):  # KITTI numbers always name their protocol
        protocols = sorted({summaries[name].metric("kitti.protocol") or "exact" for name in points})
        label = f"{metric} ({', '.join(protocols)})"
    ax.set_ylabel(label)
    ax.set_title(title or f"{label} vs {cost_label}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def save_report_plots(report: Report, out_dir: str | Path, *, metrics: Sequence[str] = ("mAP", "AP_small")) -> list[Path]:
    """Write every plot the report has data for into ``out_dir``; returns the files written."""
    out_dir = Path(out_dir)
    written = []
    channels = {name: s.channels for name, s in report.variants.items() if s.channels}
    if channels:
        written.append(plot_channels_kept(channels, out_dir / "channels_kept.png"))
    for cost, (read_cost, _) in COSTS.items():
        for metric in metrics:
            have = [s for s in report.variants.values() if read_cost(s) is not None and isinstance(s.metric(metric), (int, float))]
            if len(have) >= 2:
                written.append(plot_metric_vs_cost(report, out_dir / f"{metric}_vs_{cost}.png", metric=metric, cost=cost))
    return written
