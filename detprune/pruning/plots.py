"""The figure of a pruning run: output channels per layer, before and after, in network order.

Each layer is one bar: the original width as an outline, the kept width filled (layers that
lost channels in one colour, untouched ones in grey), and the kept fraction as dots on a
second axis, so both where the cut went and how deep it went read off one chart.
Drawn on matplotlib's Agg canvas (no display needed) and written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from detprune.errors import DetpruneError
from detprune.utils.atomic import atomic_path


def plot_channels(
    before: Mapping[str, int], after: Mapping[str, int], path: str | Path, *, title: str = "Output channels per layer"
) -> Path:
    """Bar chart of ``before`` and ``after`` (``{layer: output channels}``) written to ``path`` (PNG, SVG, PDF)."""
    layers = list(before)
    if not layers:
        raise DetpruneError("no layers to plot")
    x = list(range(len(layers)))
    kept = [after.get(name, 0) for name in layers]
    cut = [k < before[name] for name, k in zip(layers, kept)]
    fig = Figure(figsize=(max(6.0, 0.16 * len(layers) + 2.5), 4.2))
    ax = fig.add_subplot()
    ax.bar(x, [before[n] for n in layers], width=0.85, fill=False, edgecolor="0.55", linewidth=0.6, label="before")
    ax.bar(x, kept, width=0.85, color=["tab:blue" if c else "0.75" for c in cut], label="after")
    ax.set_ylabel("output channels")
    ax.set_xticks(x)
    ax.set_xticklabels(layers, rotation=90, fontsize=5 if len(layers) > 60 else 7)
    ax.set_xlim(-0.6, len(layers) - 0.4)
    ax.grid(axis="y", alpha=0.3)
    fraction = ax.twinx()
    fraction.plot(x, [k / before[n] if before[n] else 1.0 for n, k in zip(layers, kept)], "o", ms=2.5, color="tab:red", label="kept fraction")
    fraction.set_ylim(0, 1.05)
    fraction.set_ylabel("kept fraction", color="tab:red")
    total_before, total_after = sum(before.values()), sum(after.get(n, 0) for n in layers)
    ax.set_title(f"{title}: {total_after}/{total_before} channels kept ({total_after / total_before:.0%})" if total_before else title)
    handles = [
        Patch(fill=False, edgecolor="0.55", label="before"),
        Patch(color="tab:blue", label="after (cut)"),
        Patch(color="0.75", label="after (unchanged)"),
        *fraction.get_legend_handles_labels()[0],
    ]
    ax.legend(handles=handles, loc="upper left", fontsize=7, framealpha=0.9)
    FigureCanvasAgg(fig)  # render off-screen whatever backend pyplot may have chosen
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    return Path(path)
