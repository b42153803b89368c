"""The figure of a width search: every candidate's estimated fitness against its FLOPs, and
how evenly the supernet's sampled subnets covered the FLOPs range.

Left: one dot per scored candidate (coloured by generation; infeasible ones hollow), the
budget window as a band, the chosen subnet as a star. Right: the FLOPs histogram of the
subnets the prior sampled during supernet training. Drawn off-screen, written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from detprune.utils.atomic import atomic_path


def plot_search(
    history: Sequence[dict],
    chosen: dict,
    window: tuple[float, float],
    sampled_flops: Sequence[float],
    path: str | Path,
    *,
    budget: str = "flops",
    flops_range: tuple[float, float] = (0.0, 1.0),
    bins: int = 10,
) -> Path:
    """``history``: entries with flops, fitness (None where infeasible), generation; ``chosen`` one of them."""
    fig = Figure(figsize=(10.5, 4.0))
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    left.axvspan(*window, color="tab:green", alpha=0.12, label=f"budget window ({budget})" if budget == "flops"
                 else "FLOPs window (latency proxy)")
    scored = [h for h in history if h.get("fitness") is not None]
    if scored:
        dots = left.scatter([h["flops"] for h in scored], [100 * h["fitness"] for h in scored],
                            c=[h["generation"] for h in scored], cmap="viridis", s=18, label="candidates")
        fig.colorbar(dots, ax=left, label="generation")
    infeasible = [h for h in history if h.get("fitness") is None]
    if infeasible:
        left.scatter([h["flops"] for h in infeasible], [0.0] * len(infeasible), facecolors="none",
                     edgecolors="tab:red", s=18, label="over the budget")
    if chosen.get("fitness") is not None:
        left.scatter([chosen["flops"]], [100 * chosen["fitness"]], marker="*", s=180, color="tab:orange",
                     edgecolors="black", zorder=5, label="chosen")
    left.set_xlabel("FLOPs kept (fraction)")
    left.set_ylabel("supernet estimate (mAP50, points)")
    left.set_title("candidates of the evolutionary search")
    left.grid(alpha=0.3)
    left.legend(fontsize=7, loc="lower right")
    if sampled_flops:
        right.hist(list(sampled_flops), bins=bins, range=flops_range, color="tab:blue", edgecolor="white")
    right.set_xlabel("FLOPs kept (fraction)")
    right.set_ylabel("subnets sampled in training")
    right.set_title(f"prior samples over FLOPs ({len(sampled_flops)})")
    right.grid(alpha=0.3)
    fig.tight_layout()
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    return Path(path)
