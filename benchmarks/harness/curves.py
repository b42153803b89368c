"""The per-epoch validation curve of an ultralytics training run: read from its results.csv, plotted."""

from __future__ import annotations

import csv
from pathlib import Path


def read_curve(path: Path) -> list[dict]:
    """Per-epoch validation from ultralytics' results.csv: epoch, mAP50, mAP50-95 (points)."""
    if not path.is_file():
        return []
    curve = []
    with path.open() as f:
        for row in csv.DictReader(f):
            row = {k.strip(): v for k, v in row.items()}
            curve.append({"epoch": int(float(row["epoch"])), "mAP50": 100 * float(row["metrics/mAP50(B)"]),
                          "mAP50-95": 100 * float(row["metrics/mAP50-95(B)"])})
    return curve


def last_value(curve: list[dict], key: str) -> str:
    """The curve's last ``key`` for a progress line; "-" for an empty curve."""
    return f"{curve[-1][key]:.1f}" if curve else "-"


def plot_curves(curves: dict, path: Path) -> Path | None:
    """Each baseline's per-epoch validation mAP50 and mAP50-95 (ultralytics' validator), one line pair
    per ``{fold: curve}`` entry; None (nothing written) when every curve is empty."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from detprune.utils.atomic import atomic_path

    if not any(curves.values()):
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for fold, curve in curves.items():
        epochs = [p["epoch"] for p in curve]
        ax.plot(epochs, [p["mAP50"] for p in curve], label=f"fold {fold} mAP50")
        ax.plot(epochs, [p["mAP50-95"] for p in curve], linestyle="--", label=f"fold {fold} mAP50-95")
    ax.set_xlabel("epoch")
    ax.set_ylabel("val AP (points)")
    ax.set_title("Baseline training: validation per epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(Path(path), suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return Path(path)
