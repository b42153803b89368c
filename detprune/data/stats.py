"""What a dataset holds: objects per class and per COCO size bucket, boxes per image, ignore
boxes, and a histogram of box sizes -- the figures that say how much of a benchmark rests on
small objects, which is where pruning loses accuracy first."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from detprune.data.types import DetectionSet
from detprune.utils.atomic import atomic_path

# COCO's size buckets, by box area in pixels of the original image.
SMALL_MAX_AREA = 32**2
MEDIUM_MAX_AREA = 96**2
BUCKETS = ("small", "medium", "large")


def size_bucket(boxes: np.ndarray) -> np.ndarray:
    """0 small (< 32x32), 1 medium (< 96x96), 2 large, per xyxy box."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return np.digitize(area, [SMALL_MAX_AREA, MEDIUM_MAX_AREA])


def _role(label: int, ignore: bool, class_names) -> str:
    if label < 0:
        return "class-less ignore region"
    return f"ignore box of {class_names[label]}" if ignore else class_names[label]


def source_stats(dataset: DetectionSet) -> dict:
    """Boxes per class as the source files name them (KITTI's types), what each became and their
    sizes; {} where the reader kept no source names."""
    out: dict[str, dict] = {}
    for sample in dataset:
        buckets = size_bucket(sample.boxes)
        for name, label, ignore, bucket in zip(sample.source, sample.labels, sample.ignore, buckets):
            if not name:
                continue
            entry = out.setdefault(str(name), {"boxes": 0, "as": {}, **{b: 0 for b in BUCKETS}})
            entry["boxes"] += 1
            entry[BUCKETS[bucket]] += 1
            entry["as"][_role(int(label), bool(ignore), dataset.class_names)] = None
    for entry in out.values():
        entry["as"] = ", ".join(entry["as"])
    return dict(sorted(out.items(), key=lambda item: -item[1]["boxes"]))


def dataset_stats(dataset: DetectionSet) -> dict:
    """Counts as a plain dict (JSON-ready). Objects are boxes to detect; ignore boxes are
    counted apart, class-less ignore regions (KITTI DontCare) as ``ignore_regions``; ``sources``
    counts the boxes per class of the source files (:func:`source_stats`)."""
    classes = {
        name: {"objects": 0, "ignore": 0, **{b: 0 for b in BUCKETS}, "median_height": None}
        for name in dataset.class_names
    }
    heights: dict[str, list[np.ndarray]] = {name: [] for name in dataset.class_names}
    per_image, ignore_regions = [], 0
    for sample in dataset:
        objects = ~sample.ignore
        per_image.append(int(objects.sum()))
        ignore_regions += int((sample.labels < 0).sum())
        buckets = size_bucket(sample.boxes)
        for label, name in enumerate(dataset.class_names):
            mine = sample.labels == label
            entry = classes[name]
            entry["objects"] += int((mine & objects).sum())
            entry["ignore"] += int((mine & sample.ignore).sum())
            for b, bucket in enumerate(BUCKETS):
                entry[bucket] += int((mine & objects & (buckets == b)).sum())
            heights[name].append(sample.box_heights[mine & objects])
    for name, parts in heights.items():
        values = np.concatenate(parts) if parts else np.zeros(0)
        classes[name]["median_height"] = round(float(np.median(values)), 1) if len(values) else None
    counts = np.array(per_image or [0])
    total = sum(c["objects"] for c in classes.values())
    return {
        "name": dataset.name,
        "images": len(dataset),
        "objects": total,
        "ignore_boxes": sum(c["ignore"] for c in classes.values()),
        "ignore_regions": ignore_regions,
        "sizes": {b: sum(c[b] for c in classes.values()) for b in BUCKETS},
        "small_share": round(sum(c["small"] for c in classes.values()) / total, 4) if total else 0.0,
        "boxes_per_image": {
            "mean": round(float(counts.mean()), 2),
            "median": float(np.median(counts)),
            "max": int(counts.max()),
            "images_without_objects": int((counts == 0).sum()),
        },
        "classes": classes,
        "sources": source_stats(dataset),
        "deviation": dataset.deviation,
        "skipped": dict(dataset.skipped),
    }


def format_stats(stats: dict) -> str:
    """A table for people."""
    header = f"{'class':<16}{'objects':>8}{'ignore':>8}{'small':>8}{'medium':>8}{'large':>8}{'median h':>10}"
    lines = [
        f"{stats['name']}: {stats['images']} images, {stats['objects']} objects, "
        f"{stats['ignore_boxes']} ignore boxes, {stats['ignore_regions']} class-less ignore regions (DontCare)",
        header,
        "-" * len(header),
    ]
    for name, c in stats["classes"].items():
        median = "-" if c["median_height"] is None else f"{c['median_height']:.1f}"
        lines.append(f"{name:<16}{c['objects']:>8}{c['ignore']:>8}{c['small']:>8}{c['medium']:>8}{c['large']:>8}{median:>10}")
    sizes = stats["sizes"]
    lines.append("-" * len(header))
    lines.append(
        f"{'all':<16}{stats['objects']:>8}{stats['ignore_boxes']:>8}{sizes['small']:>8}{sizes['medium']:>8}{sizes['large']:>8}"
    )
    per = stats["boxes_per_image"]
    lines.append(
        f"objects per image: mean {per['mean']}, median {per['median']:g}, max {per['max']}; "
        f"images without objects: {per['images_without_objects']}; small (< 32x32 px) share: {stats['small_share']:.1%}"
    )
    if stats.get("sources"):
        head = f"{'label type':<16}{'boxes':>8}  {'read as':<28}{'small':>8}{'medium':>8}{'large':>8}"
        lines += ["", head, "-" * len(head)]
        for name, s in stats["sources"].items():
            lines.append(f"{name:<16}{s['boxes']:>8}  {s['as']:<28}{s['small']:>8}{s['medium']:>8}{s['large']:>8}")
    if stats.get("deviation"):
        lines.append(f"labels not as KITTI's: {stats['deviation']}")
    if stats.get("skipped"):
        lines.append("skipped bad inputs: " + ", ".join(f"{n} {k}" for k, n in sorted(stats["skipped"].items())))
    return "\n".join(lines)


def plot_stats(dataset: DetectionSet, path: str | Path) -> Path:
    """PNG with two histograms per class: box height, and box size (sqrt of area) against
    COCO's small / medium limits."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heights = {name: [] for name in dataset.class_names}
    sizes = {name: [] for name in dataset.class_names}
    for sample in dataset:
        keep = ~sample.ignore & (sample.labels >= 0)
        side = np.sqrt((sample.boxes[:, 2] - sample.boxes[:, 0]) * (sample.boxes[:, 3] - sample.boxes[:, 1]))
        for label, height, size in zip(sample.labels[keep], sample.box_heights[keep], side[keep]):
            heights[dataset.class_names[label]].append(height)
            sizes[dataset.class_names[label]].append(size)
    every = [v for values in heights.values() for v in values] + [v for values in sizes.values() for v in values]
    low, top = min(every, default=1.0), max(every, default=100.0)
    bins = np.geomspace(max(low * 0.9, 0.5), max(top * 1.05, low + 1.0), 30)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for ax, data, title in ((axes[0], heights, "box height (px)"), (axes[1], sizes, "box size: sqrt(area) (px)")):
        for name, values in data.items():
            if values:
                ax.hist(values, bins=bins, histtype="step", linewidth=1.6, label=f"{name} ({len(values)})")
        ax.set_xscale("log")
        ticks = [t for t in 2.0 ** np.arange(0, 12) if bins[0] <= t <= bins[-1]]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(title)
        ax.set_ylabel("objects")
        ax.grid(alpha=0.3)
    for limit, text in ((32, "small < 32"), (96, "96 < large")):
        axes[1].axvline(limit, color="grey", linestyle="--", linewidth=1)
        axes[1].text(limit, axes[1].get_ylim()[1] * 0.97, text, fontsize=8, color="grey", va="top", ha="center",
                     rotation=90, backgroundcolor="white")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{dataset.name}: {len(dataset)} images")
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path
