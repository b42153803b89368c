"""The figure of a pruning run: output channels per layer, before and after, in network order.

Each layer is one row: the original width as an outline, the kept width filled (layers that
lost channels in one colour, untouched ones in grey) and the kept share written beside it, so
where the cut went and how deep it went read off one chart. Layers run top to bottom in
side-by-side columns, their names at 8 pt: readable at the saved size however deep the model.
Drawn on matplotlib's Agg canvas (no display needed) and written atomically.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from detprune.errors import DetpruneError
from detprune.utils.atomic import atomic_path

ROWS_PER_COLUMN = 36
FONT_PT = 8


def channels_figure(
    before: Mapping[str, int], after: Mapping[str, int], *, title: str = "Output channels per layer"
) -> Figure:
    """The chart of ``before`` and ``after`` (``{layer: output channels}``) as a matplotlib Figure."""
    layers = list(before)
    if not layers:
        raise DetpruneError("no layers to plot")
    columns = math.ceil(len(layers) / ROWS_PER_COLUMN)
    rows = math.ceil(len(layers) / columns)
    widest = max(before.values())
    fig = Figure(figsize=(4.8 * columns + 0.4, 0.17 * rows + 1.4), layout="constrained")
    for col, ax in enumerate(fig.subplots(1, columns, squeeze=False)[0]):
        chunk = layers[col * rows:(col + 1) * rows]
        y = list(range(len(chunk)))
        kept = [after.get(name, 0) for name in chunk]
        cut = [k < before[name] for name, k in zip(chunk, kept)]
        ax.barh(y, [before[n] for n in chunk], height=0.8, fill=False, edgecolor="0.55", linewidth=0.6)
        ax.barh(y, kept, height=0.8, color=["tab:blue" if c else "0.75" for c in cut])
        for i, (name, k) in enumerate(zip(chunk, kept)):
            if before[name]:
                ax.text(before[name] + widest * 0.01, i, f"{k / before[name]:.0%}", va="center", fontsize=FONT_PT)
        ax.set_yticks(y)
        ax.set_yticklabels(chunk, fontsize=FONT_PT)
        ax.set_ylim(rows - 0.5, -0.5)  # network order top to bottom; columns share the row height
        ax.set_xlim(0, widest * 1.15 or 1)
        ax.set_xlabel("output channels", fontsize=FONT_PT + 1)
        ax.tick_params(axis="x", labelsize=FONT_PT)
        ax.grid(axis="x", alpha=0.3)
    handles = [
        Patch(fill=False, edgecolor="0.55", label="before"),
        Patch(color="tab:blue", label="after (cut; share kept beside)"),
        Patch(color="0.75", label="after (unchanged)"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=FONT_PT + 1, frameon=False)
    total_before, total_after = sum(before.values()), sum(after.get(n, 0) for n in layers)
    fig.suptitle(
        f"{title}: {total_after}/{total_before} channels kept ({total_after / total_before:.0%})"
        if total_before
        else title
    )
    return fig


def plot_channels(
    before: Mapping[str, int], after: Mapping[str, int], path: str | Path, *, title: str = "Output channels per layer"
) -> Path:
    """:func:`channels_figure` written to ``path`` (PNG, SVG, PDF)."""
    fig = channels_figure(before, after, title=title)
    FigureCanvasAgg(fig)  # render off-screen whatever backend pyplot may have chosen
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    return Path(path)
