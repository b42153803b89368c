"""A paired bootstrap over images for COCO AP: how sure is a difference between two models?

Both models' detections are matched once (:mod:`~detprune.evaluation.coco_matching`); a resample
is then only a multiplicity per image, and AP under it is COCO's 101-point interpolated precision
computed from weighted cumulative sums along the score order. With every weight 1 this is
pycocotools' number. The same resampled images serve both models, so the interval of the
difference reflects which images were drawn, not two independent draws. Detections of equal
score in copies of one image are taken together (COCO would interleave them one by one).
A class without ground truth in a resample has no AP there and is left out of the mean, as
COCO leaves it out; a metric with no AP at all is NaN in that resample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from detprune.data.types import DetectionSet, Detections
from detprune.errors import BadInputError
from detprune.evaluation.coco_matching import (
    IGNORED, IOU_THRESHOLDS, RECALL_POINTS, TP, ClassMatches, MatchTable, match_detections,
)

DEFAULT_METRICS = ("mAP50", "mAP50-95", "AP_small")
CONFIDENCE = 0.95
_CHUNK = 250  # resamples per block: bounds the (resamples, detections) temporaries


@dataclass(frozen=True)
class Metric:
    """Which area range and IoU thresholds, averaged over which classes (None: all that have AP)."""

    area: str
    thresholds: tuple[int, ...]
    class_index: int | None = None


def parse_metric(name: str, class_names: Sequence[str]) -> Metric:
    """``mAP50``, ``mAP75``, ``mAP50-95`` (or ``mAP``), ``AP_small|medium|large``, ``AP <class>``
    (AP50-95 of one class), ``AP50 <class>``."""
    every = tuple(range(len(IOU_THRESHOLDS)))
    fixed = {"mAP50": Metric("all", (0,)), "mAP75": Metric("all", (5,)), "mAP50-95": Metric("all", every),
             "mAP": Metric("all", every), "AP_small": Metric("small", every), "AP_medium": Metric("medium", every),
             "AP_large": Metric("large", every)}
    if name in fixed:
        return fixed[name]
    prefix, _, cls = name.partition(" ")
    lookup = {c.lower(): i for i, c in enumerate(class_names)}
    if prefix in ("AP", "AP50") and cls.lower() in lookup:
        return Metric("all", every if prefix == "AP" else (0,), lookup[cls.lower()])
    choices = ", ".join([*fixed, *(f"AP {c}" for c in class_names), *(f"AP50 {c}" for c in class_names)])
    raise BadInputError(f"unknown metric {name!r}; choose from {choices}")


def weighted_ap(matches: ClassMatches, weights: np.ndarray, thresholds: Sequence[int]) -> np.ndarray:
    """(resamples, len(thresholds)) AP of one class and area; ``weights`` (resamples, images) are
    image multiplicities. NaN where the weighted images hold no ground truth that counts.

    Precision is read only at true positives: between two of them it falls, so the envelope (the
    best precision at any later point) is the best at a later true positive, and the first point
    reaching a recall is a true positive (recall 0: the first point, whose envelope is the same).
    """
    weights = np.atleast_2d(weights).astype(np.float64)
    total_gt = weights @ matches.gt_count
    by_image = np.ascontiguousarray(weights.T)  # (images, resamples): sums run down rows, across resamples at once
    out = np.zeros((len(weights), len(thresholds)))
    for column, t in enumerate(thresholds):
        status = matches.status[t]
        image = matches.image[status != IGNORED]  # an ignored detection adds no point of its own
        hits = np.flatnonzero(status[status != IGNORED] == TP)
        if not len(hits):
            continue
        image = image[:hits[-1] + 1]  # later false positives only lower precision at recall reached
        for start in range(0, len(weights), _CHUNK):
            block = by_image[:, start:start + _CHUNK]
            seen = block[image].cumsum(axis=0)[hits]
            found = block[image[hits]].cumsum(axis=0)
            precision = found / (seen + np.spacing(1))
            envelope = np.maximum.accumulate(precision[::-1], axis=0)[::-1].T
            gt = np.maximum(total_gt[start:start + _CHUNK], 1)  # rows without gt become NaN below
            recall = np.ascontiguousarray((found / gt).T)
            index = np.array([np.searchsorted(row, RECALL_POINTS, side="left") for row in recall])
            values = np.take_along_axis(envelope, np.minimum(index, len(hits) - 1), axis=1)
            out[start:start + _CHUNK, column] = np.where(index < len(hits), values, 0.0).mean(axis=1)
    out[total_gt == 0] = np.nan
    return out


def _mean(values: np.ndarray, axis: int) -> np.ndarray:
    """Mean over ``axis`` of the finite entries; NaN where there is none."""
    finite = np.isfinite(values)
    count = finite.sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.where(finite, values, 0.0).sum(axis=axis) / np.maximum(count, 1), np.nan)


def metric_values(table: MatchTable, weights: np.ndarray, metrics: Sequence[str]) -> dict[str, np.ndarray]:
    """{metric: (resamples,) values} for ``weights`` (resamples, images); NaN where undefined."""
    weights = np.atleast_2d(weights)
    parsed = {name: parse_metric(name, table.class_names) for name in metrics}
    cache: dict[tuple[str, int], np.ndarray] = {}  # (area, class) -> (resamples, T) AP
    out = {}
    for name, metric in parsed.items():
        if metric.area not in table.areas:
            raise BadInputError(f"metric {name!r} needs area range {metric.area!r}, which was not matched")
        classes = range(len(table.class_names)) if metric.class_index is None else [metric.class_index]
        per_class = []
        for k in classes:
            if (metric.area, k) not in cache:
                needed = sorted({t for m in parsed.values() if m.area == metric.area for t in m.thresholds})
                aps = np.full((len(weights), len(IOU_THRESHOLDS)), np.nan)
                aps[:, needed] = weighted_ap(table.areas[metric.area][k], weights, needed)
                cache[metric.area, k] = aps
            per_class.append(cache[metric.area, k][:, list(metric.thresholds)].mean(axis=1))
        out[name] = _mean(np.stack(per_class, axis=1), axis=1)
    return out


def resample_weights(num_images: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, images) multiplicities of ``resamples`` draws of ``num_images`` images with replacement."""
    draws = np.random.default_rng(seed).integers(0, num_images, size=(resamples, num_images))
    flat = draws + np.arange(resamples)[:, None] * num_images
    return np.bincount(flat.ravel(), minlength=resamples * num_images).reshape(resamples, num_images).astype(np.int32)


def _areas(metrics: Sequence[str], class_names: Sequence[str]) -> list[str]:
    return sorted({parse_metric(name, class_names).area for name in metrics})


def _interval(values: np.ndarray) -> list[float | None]:
    finite = values[np.isfinite(values)]
    if not len(finite):
        return [None, None]
    tail = (1 - CONFIDENCE) / 2 * 100
    return [float(v) for v in np.percentile(finite, [tail, 100 - tail])]


def _number(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def paired_bootstrap(
    dataset: DetectionSet,
    preds_a: Sequence[Detections],
    preds_b: Sequence[Detections],
    metrics: Sequence[str] | None = None,
    resamples: int = 1000,
    seed: int = 0,
) -> dict:
    """Paired bootstrap of ``metrics`` (default: mAP50, mAP50-95, AP_small and ``AP <class>`` of every
    class; names as :func:`parse_metric` reads them) for model A and model B on the same images.

    Returns ``{"images", "resamples", "seed", "confidence", "metrics": {name: {"a", "b", "diff"
    (b - a), "diff_ci", "a_ci", "b_ci" ([low, high] percentile intervals), "resamples_defined"}}}``;
    points are pycocotools' numbers on ``dataset`` (None where undefined) and intervals are over
    the resamples where the metric is defined. ``deviation`` is added when the data carry one.
    """
    if isinstance(resamples, bool) or not isinstance(resamples, (int, np.integer)) or resamples < 1:
        raise BadInputError(f"resamples must be a whole number >= 1, got {resamples!r}")
    metrics = [*DEFAULT_METRICS, *(f"AP {c}" for c in dataset.class_names)] if metrics is None else list(metrics)
    if not metrics:
        raise BadInputError("no metrics to bootstrap; name at least one, e.g. mAP50")
    areas = _areas(metrics, dataset.class_names)
    table_a = match_detections(dataset, preds_a, areas)
    table_b = match_detections(dataset, preds_b, areas)
    ones = np.ones((1, len(dataset)), np.int32)
    weights = resample_weights(len(dataset), int(resamples), seed)
    point_a, point_b = metric_values(table_a, ones, metrics), metric_values(table_b, ones, metrics)
    boot_a, boot_b = metric_values(table_a, weights, metrics), metric_values(table_b, weights, metrics)
    result: dict = {"images": len(dataset), "resamples": int(resamples), "seed": seed, "confidence": CONFIDENCE,
                    "metrics": {}}
    for name in metrics:
        diff = boot_b[name] - boot_a[name]
        a, b = float(point_a[name][0]), float(point_b[name][0])
        result["metrics"][name] = {
            "a": _number(a), "b": _number(b), "diff": _number(b - a),
            "diff_ci": _interval(diff), "a_ci": _interval(boot_a[name]), "b_ci": _interval(boot_b[name]),
            "resamples_defined": int(np.isfinite(diff).sum()),
        }
    deviation = getattr(dataset, "deviation", "")
    if deviation:
        result["deviation"] = deviation
    return result


def format_bootstrap(result: dict, label_a: str = "A", label_b: str = "B") -> str:
    """The bootstrap as an aligned table (AP in points, i.e. x100)."""
    def pts(v):
        return "–" if v is None else f"{100 * v:.1f}"

    def ci(pair):
        return "–" if pair[0] is None else f"[{100 * pair[0]:+.1f}, {100 * pair[1]:+.1f}]"

    rows = [[name, pts(m["a"]), pts(m["b"]), "–" if m["diff"] is None else f"{100 * m['diff']:+.1f}",
             ci(m["diff_ci"])] for name, m in result["metrics"].items()]
    header = ["metric", label_a, label_b, f"{label_b} - {label_a}", f"{result['confidence']:.0%} interval"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in [header, *rows]
    ]
    note = f"paired bootstrap over {result['images']} images, {result['resamples']} resamples (seed {result['seed']})"
    if result.get("deviation"):
        note += f"; data: {result['deviation']}"
    return "\n".join([*lines, note])
