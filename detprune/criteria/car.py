"""CAR: a channel's importance is how much the detector gets worse when it alone is removed.

Source: R. Abbasi-Asl and B. Yu, "Structural Compression of Convolutional Neural Networks
(Based on the Classification Accuracy Reduction)", arXiv:1705.07356, 2017. The paper scores
each filter of a classifier by the accuracy lost when it alone is removed, prunes the least
important greedily with re-scoring (and fine-tuning) between steps, and reads class-wise
reductions as which filters a class depends on. The adaptation to detectors is detprune's.

For every scored layer ``l`` and channel ``c``, the channel is removed by zeroing it at the
layer's activation point (a forward hook; the activation is what every consumer reads, so
zero there is exactly the channel's removal from the network downstream), and a held-out
set is re-evaluated:

    metric="loss" (default): s[c] = L(masked) - L(intact)   L = sum of adapter.detection_loss
                             over the held-out batches, train-mode heads with frozen
                             normalisation (running statistics), no gradients
    metric="map":            s[c] = mAP(intact) - mAP(masked)   (COCO AP .50:.95 of
                             adapter.predict on the held-out set)

``class_weights`` (``{class name: weight > 0}``, unlisted classes weigh 1): with
``metric="map"`` a channel's score is the weighted mean of the per-class AP drops,
``sum_k w_k (AP_k(intact) - AP_k(masked)) / sum_k w_k`` over the classes with an AP; with
``metric="loss"`` each GT box's loss terms are scaled by its class's weight, which needs the
adapter's ``weighted_detection_loss`` (a family without one is a one-line error).

``per_class=True`` (with ``metric="map"``) also records each class's AP drop per channel in
``last_class_drops`` (:func:`plot_class_drops` draws them): the channels a class depends on.

Cost: one evaluation of the held-out set per scored channel, plus one for the intact model;
it is logged before the work starts and a progress bar counts it. The held-out batches are
read once and kept in memory. Activations below the layer under test are not cached: the
adapter contract exposes a detector's forward only as a whole (YOLO's graph reads outputs of
earlier layers through concat and skip links, Faster R-CNN runs backbone, FPN, RPN and RoI
heads in its own code), so resuming from a layer would need per-family forward code the
criteria do not have. To keep the default cheap, ``max_channels_per_layer`` (default 8)
measures a seeded random sample of that many channels per layer; the other channels of the
layer get the median of the measured ones (so the pruner neither favours nor spares them),
and ``last_stats.measured`` says how many were measured where. ``None`` measures every
channel. ``layers`` limits scoring to named layers (the result holds only those; the pruner
keeps unscored layers whole).

Measured cost (CPU, one thread, random-init yolov8n at 320 px, 16 held-out images): about
1.5 s per loss evaluation and 1.7 s per mAP evaluation; the default plan is 1 + 65 x 8 = 521
evaluations (about 13 minutes), every channel 5201 (about 2 hours). Use ``layers`` and
``max_channels_per_layer`` (or a GPU) accordingly.

:func:`detprune.pruning.car_schedule.car_prune` is the paper's greedy loop on top: score,
remove the least important channel(s) through :func:`detprune.pruning.prune_model` (``kept=...``),
optionally fine-tune, re-score, repeat. The criterion here only scores.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from detprune.adapters.base import DetectorAdapter
from detprune.criteria.base import ChannelScores, Criterion, register_criterion
from detprune.criteria.class_weights import check_class_weights, weight_table, weighted_loss
from detprune.criteria.hooks import model_device, out_channels, scoring_state
from detprune.data.batch import Batch
from detprune.data.types import DetectionSet
from detprune.errors import DetpruneError
from detprune.utils.progress import progress_counter

log = logging.getLogger(__name__)
Metric = Literal["loss", "map"]
METRICS = ("loss", "map")


@dataclass
class CarStats:
    """What a CAR pass cost: forward passes (one per held-out batch and evaluation), time, coverage."""

    images: int = 0
    batches: int = 0
    evaluations: int = 0
    forward_passes: int = 0
    seconds: float = 0.0
    baseline: float = 0.0
    measured: dict[str, int] = field(default_factory=dict)  # layer -> channels actually masked

    def as_dict(self) -> dict:
        return {"images": self.images, "scored": self.images, "skipped_without_boxes": 0, "batches": self.batches,
                "evaluations": self.evaluations, "forward_passes": self.forward_passes,
                "seconds": round(self.seconds, 3), "baseline": self.baseline, "measured": dict(self.measured)}


class ChannelMask:
    """Zero channel ``channel`` of ``module``'s output while active (``channel=None``: no change)."""

    def __init__(self, module: nn.Module) -> None:
        self.channel: int | None = None
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        if self.channel is None:
            return None
        output = output.clone()
        output[:, self.channel] = 0
        return output

    def remove(self) -> None:
        self._handle.remove()


class HeldOut:
    """The held-out batches (in memory, on the model's device) and how to evaluate a model on them."""

    def __init__(self, adapter: DetectorAdapter, model: nn.Module, batches: Iterable[Batch], metric: str,
                 class_weights: Mapping[str, float] | None = None) -> None:
        device = model_device(model)
        self.adapter, self.model, self.metric = adapter, model, metric
        self.table = None  # per label id, for the loss; the mAP weighs its per-class APs by name
        self.class_weights: dict[str, float] = {}
        if class_weights:
            names = list(adapter.class_names(model))
            self.table = weight_table(class_weights, names, "car")
            if self.table is not None:
                self.class_weights = {n: float(w) for n, w in zip(names, self.table.tolist())}
            if self.table is not None and metric == "loss" and adapter.weighted_detection_loss is None:
                raise DetpruneError(f"car: metric 'loss' cannot weigh classes with the {adapter.family} adapter "
                                    "(its detection loss has no per-box weights); use metric='map'")
        self.batches = [batch.to(device) for batch in batches]
        if not self.batches:
            raise DetpruneError("car needs a held-out set: the batches are empty")
        self.images = sum(len(b) for b in self.batches)
        self.dataset = None
        if metric == "map":
            names = list(adapter.class_names(model))
            self.dataset = DetectionSet(names, [s for b in self.batches for s in b.samples], name="car-held-out")

    def evaluate(self) -> tuple[float, dict[str, float]]:
        """(value, per-class AP): total detection loss, or mAP with per-class AP."""
        if self.metric == "loss":
            with scoring_state(self.model, train=True), torch.no_grad():
                total = sum(float(weighted_loss(self.adapter, self.model, b, self.table, "car")) for b in self.batches)
            return total, {}
        from detprune.evaluation.protocol import evaluate_detections

        with scoring_state(self.model, train=False), torch.no_grad():
            predictions = [d for b in self.batches for d in self.adapter.predict(self.model, b)]
        result = evaluate_detections(self.dataset, predictions, kitti=False)
        per_class = {k: float(v) for k, v in result["per_class_AP"].items() if v is not None}
        return float(result["mAP"] or 0.0), per_class

    def weighted_drop(self, base: dict[str, float], masked: dict[str, float]) -> float:
        """The class-weighted mean of the AP drops over the classes the intact model has an AP for."""
        if not base:
            return 0.0
        weights = {k: self.class_weights.get(k, 1.0) for k in base}
        return sum(w * (base[k] - masked.get(k, 0.0)) for k, w in weights.items()) / sum(weights.values())


@register_criterion
class CAR(Criterion):
    """Classification-accuracy-reduction importance (Abbasi-Asl & Yu, 2017); see the module docstring."""

    name = "car"
    needs_data = True

    def __init__(
        self,
        metric: Metric = "loss",
        max_channels_per_layer: int | None = 8,
        layers: Sequence[str] | None = None,
        per_class: bool = False,
        class_weights: Mapping[str, float] | None = None,
        seed: int | None = 0,
        progress: bool = True,
    ) -> None:
        self.class_weights = check_class_weights(class_weights)
        if metric not in METRICS:
            raise DetpruneError(f"car: metric must be one of {', '.join(METRICS)}, got {metric!r}")
        if per_class and metric != "map":
            raise DetpruneError("car: per_class needs metric='map' (the detection loss has no per-class split)")
        if max_channels_per_layer is not None and max_channels_per_layer < 1:
            raise DetpruneError("car: max_channels_per_layer must be >= 1 (or None for every channel)")
        self.metric = metric
        self.max_channels_per_layer = max_channels_per_layer
        self.layers = list(layers) if layers is not None else None
        self.per_class = per_class
        self.seed = seed
        self.progress = progress
        self.last_stats = CarStats()
        self.last_measured: dict[str, np.ndarray] = {}  # layer -> the channel indices masked
        self.last_class_drops: dict[str, dict[str, np.ndarray]] = {}  # layer -> class -> drop per measured channel

    def options(self) -> dict:
        return {"metric": self.metric, "max_channels_per_layer": self.max_channels_per_layer,
                "layers": self.layers, "per_class": self.per_class,
                **({"class_weights": dict(self.class_weights)} if self.class_weights else {}), "seed": self.seed}

    def planned_channels(self, adapter: DetectorAdapter, model: nn.Module) -> dict[str, np.ndarray]:
        """{layer: the channels that will be masked}, in the order they are measured."""
        points = adapter.activation_points(model)
        names = list(points) if self.layers is None else self.layers
        unknown = [n for n in names if n not in points]
        if unknown:
            raise DetpruneError(
                f"car: unknown layer(s) {', '.join(unknown[:5])}; choose from the model's activation points"
            )
        rng = np.random.default_rng(self.seed)
        plan = {}
        for name in names:
            width = out_channels(model, name)
            if width is None:
                raise DetpruneError(f"car: the channel count of layer {name!r} is unknown")
            cap = self.max_channels_per_layer
            plan[name] = (
                np.arange(width) if cap is None or cap >= width else np.sort(rng.choice(width, cap, replace=False))
            )
        return plan

    def score(self, adapter: DetectorAdapter, model: nn.Module, batches: Iterable[Batch]) -> ChannelScores:
        tick = time.perf_counter()
        points = adapter.activation_points(model)
        plan = self.planned_channels(adapter, model)
        held = HeldOut(adapter, model, batches, self.metric, self.class_weights)
        evaluations = 1 + sum(len(c) for c in plan.values())
        stats = CarStats(images=held.images, batches=len(held.batches), evaluations=evaluations,
                         forward_passes=evaluations * len(held.batches))
        self.last_stats, self.last_measured, self.last_class_drops = stats, {}, {}
        log.info("car: %d evaluations of %d held-out images (%d forward passes) over %d layers",
                 evaluations, held.images, stats.forward_passes, len(plan))
        bar = progress_counter(evaluations, desc="car", disable=not self.progress)
        try:
            base, base_classes = held.evaluate()
            bar.update()
            stats.baseline = base
            scores: ChannelScores = {}
            for name, channels in plan.items():
                drops = np.zeros(len(channels))
                class_drops = {k: np.zeros(len(channels)) for k in base_classes} if self.per_class else {}
                mask = ChannelMask(points[name])
                try:
                    for i, channel in enumerate(channels.tolist()):
                        mask.channel = channel
                        value, per_class = held.evaluate()
                        if self.metric == "loss":
                            drops[i] = value - base
                        elif held.class_weights:  # the per-class AP drops, weighted
                            drops[i] = held.weighted_drop(base_classes, per_class)
                        else:
                            drops[i] = base - value
                        for k in class_drops:
                            class_drops[k][i] = base_classes[k] - per_class.get(k, 0.0)
                        bar.update()
                finally:
                    mask.remove()
                scores[name] = _fill_unmeasured(out_channels(model, name), channels, drops)
                self.last_measured[name] = channels
                stats.measured[name] = len(channels)
                if self.per_class:
                    self.last_class_drops[name] = class_drops
        finally:
            bar.close()
        stats.seconds = time.perf_counter() - tick
        return scores


def _fill_unmeasured(width: int, channels: np.ndarray, drops: np.ndarray) -> torch.Tensor:
    """Measured channels get their drop, the others the layer's median drop."""
    out = np.full(width, float(np.median(drops)) if len(drops) else 0.0)
    out[channels] = drops
    return torch.from_numpy(out)


def plot_class_drops(criterion: CAR, path: str | Path, layers: Sequence[str] | None = None) -> Path:
    """A heat map per layer: AP drop of each class (rows) when each measured channel (columns) goes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from detprune.utils.atomic import atomic_path

    drops = criterion.last_class_drops
    names = [n for n in (layers or list(drops)) if n in drops and drops[n]]
    if not names:
        raise DetpruneError("no class-wise CAR drops to plot: score with metric='map', per_class=True first")
    rows = max(len(drops[n]) for n in names)
    fig, axes = plt.subplots(len(names), 1, figsize=(8, len(names) * (1.0 + 0.3 * rows)), squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        classes = sorted(drops[name])
        grid = np.stack([drops[name][k] for k in classes])
        limit = float(np.abs(grid).max()) or 1.0
        image = ax.imshow(grid, aspect="auto", cmap="coolwarm", vmin=-limit, vmax=limit, interpolation="nearest")
        ax.set_yticks(range(len(classes)), classes)
        channels = criterion.last_measured[name]
        ax.set_xticks(range(len(channels)), [str(c) for c in channels], fontsize=6)
        ax.set_title(f"{name}: AP drop when the channel is removed", fontsize=9)
        fig.colorbar(image, ax=ax)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path
