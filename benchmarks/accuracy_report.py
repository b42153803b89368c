"""Tables and plots of benchmarks/accuracy.py: mean ± spread over folds of every cell's columns."""

from __future__ import annotations

import statistics
from pathlib import Path

from harness.criteria import allocation_label

METRICS = ("mAP50", "mAP50-95", "AP_small", "AP Car", "AP Pedestrian", "AP Cyclist", "KITTI moderate", "KITTI hard")
# the settings a row groups its folds by, with the value a cell without that setting has
GROUP_DEFAULTS = {"target": 1.0, "criterion": "-", "allocation": "-", "distill": False, "seed": 0, "replica": "",
                  "class_weights": "", "finetune_weights": ""}
GROUP = ("kind", *GROUP_DEFAULTS)


def _group(cell: dict) -> tuple:
    s = cell["settings"]
    return (cell["kind"], *(s.get(key, default) for key, default in GROUP_DEFAULTS.items()))


def _stat(values: list[float]) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values), "values": values}


def summarise(cells: list[dict]) -> list[dict]:
    """One row per configuration: each column's mean and standard deviation over its folds."""
    groups: dict[tuple, list[dict]] = {}
    for cell in cells:
        groups.setdefault(_group(cell), []).append(cell)
    rows = []
    for key, members in groups.items():
        row = dict(zip(GROUP, key))
        row["folds"] = sorted(c["fold"] for c in members)
        for column in METRICS:
            row[column] = _stat([c["metrics"].get(column) for c in members])
        for column in ("params", "flops", "flops_kept"):
            row[column] = _stat([c[column] for c in members])
        row["latency_ratio"] = _stat([(c.get("latency") or {}).get("ratio") for c in members])
        row["latency_ms"] = _stat([(c.get("latency") or {}).get("median_ms") for c in members])
        row["seconds"] = _stat([c["seconds"]["total"] for c in members if not c.get("cached")] or
                               [c["seconds"]["total"] for c in members])
        rows.append(row)
    order = {"unpruned": 0, "same_budget": 1, "pruned": 2}
    rows.sort(
        key=lambda r: (
            order[r["kind"]],
            -r["target"],
            r["criterion"],
            r["allocation"],
            r["distill"],
            r["seed"],
            r["replica"],
            r["class_weights"],
            r["finetune_weights"],
        )
    )
    return rows


def fmt(cell, digits: int = 1) -> str:
    if cell is None:
        return "-"
    if isinstance(cell, dict):
        return (
            f"{cell['mean']:.{digits}f} ± {cell['std']:.{digits}f}" if cell["n"] > 1 else f"{cell['mean']:.{digits}f}"
        )
    return f"{cell:.{digits}f}"


def row_name(row: dict) -> str:
    if row["kind"] == "unpruned":
        return "baseline (unpruned)"
    if row["kind"] == "same_budget":
        return "baseline, same budget"
    mode = "distill" if row["distill"] else "plain"
    extra = f", seed {row['seed']}" + (" rerun" if row["replica"] else "") if row["replica"] or row["seed"] else ""
    weights = f" / {row['class_weights']}" if row.get("class_weights") else ""
    weights += f" / fine-tuned {row['finetune_weights']}" if row.get("finetune_weights") else ""
    return f"{row['criterion']} / {allocation_label(row['allocation'])} / {mode}{weights}{extra}"


def markdown(report: dict, args) -> str:
    protocol = report.get("kitti_protocol") or "exact"
    head = [
        "FLOPs target",
        "configuration",
        "folds",
        "FLOPs kept",
        *METRICS[:6],
        f"KITTI mod ({protocol})",
        f"KITTI hard ({protocol})",
        "params (M)",
        "GFLOPs",
        "CPU latency ratio",
        "cell s",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in report["rows"]:
        flops_kept = "100%" if row["kind"] != "pruned" else f"{row['flops_kept']['mean']:.1%}"
        cells = [
            f"{row['target']:g}" if row["kind"] == "pruned" else "1.0",
            row_name(row),
            str(len(row["folds"])),
            flops_kept,
            *[fmt(row[c]) for c in METRICS],
            f"{row['params']['mean'] / 1e6:.2f}",
            f"{row['flops']['mean'] / 1e9:.2f}",
            fmt(row["latency_ratio"], 2),
            f"{row['seconds']['mean']:.0f}" if row["seconds"] else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    h, w = report["input_hw"]
    folds = report["settings"]["folds"]
    lines.append("")
    lines.append(f"AP in points, mean ± standard deviation over the {folds} folds (every frame held out once); "
                 f"input {w}x{h} (rect letterbox) for scoring, training and evaluation; baseline "
                 f"{args.baseline_epochs} epochs per fold, every other row {args.finetune_epochs} more epochs; the "
                 "model after the LAST epoch is reported. Per-class AP is COCO AP@[.5:.95]; GFLOPs = 2 x GMACs at "
                 f"{w}x{h}; CPU latency ratio = ONNX Runtime median of the row's model / the unpruned model's, timed "
                 f"interleaved at batch 1, {args.threads} threads.")
    for item in report.get("not_run", []):
        fold = f" fold {item['fold']}" if "fold" in item else ""
        lines.append(
            f"- not run: flops {item['target']:g} {item['criterion']} / {allocation_label(item['allocation'])} / "
            f"{'distill' if item['distill'] else 'plain'}, seed {item['seed']}"
            f"{' rerun' if item.get('replica') else ''}{fold}: {item['reason']}"
        )
    return "\n".join(lines) + "\n"


def baseline_table(report: dict) -> str:
    """Per fold: the baseline's held-out scores, the small objects it could find, how flat its curve ended."""
    lines = [
        "| fold | val frames | small objects | mAP50 | AP_small | val mAP50, last 5 epochs | gain over the 10 before |",
        "|---|---|---|---|---|---|---|",
    ]
    unpruned = {c["fold"]: c for c in report["cells"] if c["kind"] == "unpruned"}
    for fold, curve in sorted(report["baseline_curves"].items(), key=lambda kv: int(kv[0])):
        cell = unpruned.get(int(fold))
        if cell is None:
            continue
        tail = [p["mAP50"] for p in curve[-5:]]
        before = [p["mAP50"] for p in curve[-15:-5]]
        gain = statistics.fmean(tail) - statistics.fmean(before) if tail and before else None
        m = cell["metrics"]
        lines.append(
            f"| {fold} | {report['fold_sizes'][int(fold)]} | {report['small_objects'][int(fold)]} | {fmt(m['mAP50'])} "
            f"| {fmt(m['AP_small'])} | {fmt(statistics.fmean(tail) if tail else None)} | "
            f"{'-' if gain is None else f'{gain:+.1f}'} |"
        )
    return "\n".join(lines) + "\n"


def repeat_table(report: dict) -> str:
    """The first configuration on fold 0 against its repeats (same seed from scratch; another seed)."""
    repeats = report.get("repeats") or []
    if not repeats:
        return ""
    first = repeats[0]["settings"]
    original = [
        c
        for c in report["cells"]
        if c["kind"] == "pruned"
        and c["fold"] == 0
        and all(
            c["settings"].get(k) == first.get(k)
            for k in ("target", "criterion", "allocation", "distill", "class_weights", "finetune_weights")
        )
        and c["settings"].get("seed") == report["settings"]["seed"]
        and not c["settings"].get("replica")
    ]
    lines = ["| run (fold 0) | " + " | ".join(METRICS[:3]) + " | FLOPs kept |", "|---|---|---|---|---|"]
    for cell in original + repeats:
        s = cell["settings"]
        name = f"seed {s['seed']}" + (" (rerun from scratch)" if s.get("replica") else "")
        lines.append(f"| {name} | " + " | ".join(fmt(cell["metrics"][c], 2) for c in METRICS[:3])
                     + f" | {cell['flops_kept']:.2%} |")
    return "\n".join(lines) + "\n"


def plot_vs_flops(rows: list[dict], path: Path) -> Path | None:
    """mAP50 and AP_small against FLOPs kept, error bars = standard deviation over folds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from detprune.utils.atomic import atomic_path

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, column in zip(axes, ("mAP50", "AP_small")):
        for row in rows:
            if row.get(column) is None:
                continue
            x = 100.0 if row["kind"] != "pruned" else 100.0 * row["flops_kept"]["mean"]
            marker = {"unpruned": "*", "same_budget": "P"}.get(row["kind"], "o")
            ax.errorbar(x, row[column]["mean"], yerr=row[column]["std"], fmt=marker, capsize=3, label=row_name(row))
        ax.set_xlabel("FLOPs kept (%)")
        ax.set_ylabel(f"{column} (points)")
        ax.set_title(f"{column} vs FLOPs, mean ± std over folds")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7)
    fig.tight_layout(rect=(0, 0.18, 1, 1))
    with atomic_path(Path(path), suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return Path(path)
