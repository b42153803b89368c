"""Box-weighted gradient saliency: keep the channels the detections depend on where the objects are.

Source: J. I. Choi and Q. Tian, "Visual Saliency-Guided Channel Pruning for Deep Visual
Detectors in Autonomous Driving", IEEE Intelligent Vehicles Symposium 2023,
arXiv:2303.02512 (extended in Neurocomputing 2025 as "Saliency and location aware pruning
of deep visual detectors for autonomous driving"). The paper gives the idea (a
Grad-CAM-like saliency of a detection objective, weighted spatially by the ground-truth
boxes and their context) without code; the exact formula below is detprune's.

For every prunable conv ``l`` with activation ``A`` (B x C x H x W, taken from
``adapter.activation_points``) and every scoring image with at least one object box::

    U       = adapter.detection_utility(model, batch)      (utility="confidence", default)
            = -adapter.detection_loss(model, batch)        (utility="loss")
    M       = the box weight map at A's resolution          (detprune.criteria.weight_map)
    s_l[c] += sum_{b, h, w} M[b, h, w] * | A[b, c, h, w] * dU/dA[b, c, h, w] |

accumulated in float64 over the whole scoring set; ``|A * dU/dA|`` is the first-order
estimate of how much ``U`` changes if the channel's activation at that position is removed.

Options (keyword arguments of :class:`BoxWeightedSaliency`, ``detprune score`` flags):

``context`` (0.5)
    weight of the ring around each box; the ring is the box grown by ``context_scale``.
``context_scale`` (1.5)
    growth factor of a box (width and height, about its centre) that bounds its ring.
``background`` (0.0)
    weight of positions outside every grown box (with ``normalize_boxes`` the whole
    background's mass, relative to one object's unit mass).
``normalize_boxes`` (True)
    give each box unit mass in ``M`` at every resolution, so a 20x20 px pedestrian counts
    as much as a 300x200 px truck; off, a box's mass is its area in cells.
``overlap`` ("sum")
    how overlapping boxes combine: ``"sum"`` keeps every box's unit mass, ``"max"`` keeps
    weights in [0, 1]; see :mod:`detprune.criteria.weight_map` for why sum is the default.
``utility`` ("confidence")
    ``"confidence"``: the adapter's detection utility (confidence of each GT box's class at
    its assigned predictions, times the predicted box's IoU with it for YOLO), computed in
    eval mode. ``"loss"``: the negative detection
    loss, in train mode with normalisation layers frozen. Detection losses normalise by the
    number of targets in the batch, so only ``"confidence"`` is independent of batch size.
``class_weights`` (None)
    ``{class name: weight > 0}``: a box's mass in ``M`` is scaled by its class's weight
    (unlisted classes weigh 1), so the channels the weighted classes' boxes use rank higher;
    see :mod:`detprune.criteria.class_weights`.
``seed`` (0)
    seeds torch for the scoring pass (adapters with sampling stay reproducible); the
    caller's random state is restored afterwards.

Properties: one forward and one backward per batch; parameters do not require gradients
while scoring (backward skips weight gradients); normalisation layers use running
statistics, so each image contributes independently of its batch and scores do not depend
on the batch size. Images without an object box (ignore regions do not count) are skipped
and counted in :attr:`BoxWeightedSaliency.last_stats`; a scoring set without any object box
is an error. Activations whose first dimension is not the batch (per-RoI features) have no
image geometry and are weighted uniformly; they are listed in the stats.

Layers the utility's gradient never reaches score 0 on every channel and are listed in
``last_stats.unreached_layers``, typically a pyramid level to which no box of the scoring
set was assigned. (The YOLO adapter's utility multiplies the class confidence by the IoU of
the predicted box, so the box-regression branch is reached; a utility made of class scores
alone would leave it at 0.) Score on more images, protect such layers, or use
``utility="loss"``.

Scores are raw (no per-layer normalisation): the pruner normalises per layer and reduces to
coupled groups.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Literal, Mapping

import torch
from torch import nn

from detprune.adapters.base import DetectorAdapter
from detprune.criteria.base import ChannelScores, Criterion, register_criterion
from detprune.criteria.class_weights import box_weights, check_class_weights, model_weight_table
from detprune.criteria.hooks import GradientCapture, model_device, out_channels, scoring_state, seeded
from detprune.criteria.weight_map import WeightMapSpec, batch_weight_maps
from detprune.data.batch import Batch
from detprune.errors import DetpruneError
from detprune.utils.progress import progress_bar

Utility = Literal["confidence", "loss"]
UTILITIES: tuple[str, ...] = ("confidence", "loss")


@dataclass
class ScoringStats:
    """What a scoring pass saw: images scored, images skipped for want of object boxes."""

    images: int = 0
    skipped_without_boxes: int = 0
    batches: int = 0
    uniform_layers: list[str] = field(default_factory=list)
    unreached_layers: list[str] = field(default_factory=list)  # no gradient ever arrived: all scores 0

    @property
    def scored(self) -> int:
        return self.images - self.skipped_without_boxes

    def as_dict(self) -> dict:
        return {
            "images": self.images,
            "scored": self.scored,
            "skipped_without_boxes": self.skipped_without_boxes,
            "batches": self.batches,
            "uniform_layers": list(self.uniform_layers),
            "unreached_layers": list(self.unreached_layers),
        }


def ignore_masks(batch: Batch) -> list[torch.Tensor]:
    """Per image, the boxes that are ignore regions: flagged so, or class-less (label -1)."""
    return [ignore.bool() | (labels < 0) for ignore, labels in zip(batch.ignore, batch.labels)]


def images_with_objects(batch: Batch) -> list[int]:
    """Indices of the images that hold at least one object box (not an ignore region)."""
    return [i for i, ignore in enumerate(ignore_masks(batch)) if bool((~ignore).any())]


def select_images(batch: Batch, keep: list[int]) -> Batch:
    """The batch restricted to the images ``keep`` (same order); the input is not modified."""
    if len(keep) == len(batch):
        return batch
    index = torch.as_tensor(keep, dtype=torch.long, device=batch.images.device)
    return Batch(
        batch.images.index_select(0, index),
        [batch.boxes[i] for i in keep],
        [batch.labels[i] for i in keep],
        [batch.ignore[i] for i in keep],
        [batch.letterboxes[i] for i in keep],
        [batch.samples[i] for i in keep],
    )


def compute_utility(adapter: DetectorAdapter, model: nn.Module, batch: Batch, utility: str) -> torch.Tensor:
    """The scalar whose gradient the saliency follows (see the module docstring)."""
    value = (
        adapter.detection_utility(model, batch) if utility == "confidence" else -adapter.detection_loss(model, batch)
    )
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        raise DetpruneError(f"{type(adapter).__name__}: the {utility} utility must be a scalar tensor")
    return value.reshape(())


class BatchWeightMaps:
    """The weight maps of one batch, drawn once per activation resolution."""

    def __init__(self, batch: Batch, spec: WeightMapSpec, table: torch.Tensor | None = None) -> None:
        self.batch = batch
        self.spec = spec
        self.box_weights = None if table is None else box_weights(batch.labels, table)
        self.input_hw = tuple(batch.images.shape[-2:])
        self._cache: dict[tuple, torch.Tensor] = {}

    def at(self, map_hw: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
        """(B, h, w) weights in ``like``'s dtype and device."""
        key = (map_hw, like.dtype, like.device)
        if key not in self._cache:
            maps = batch_weight_maps(
                self.batch.boxes,
                ignore_masks(self.batch),
                self.input_hw,
                map_hw,
                self.spec,
                like.device,
                self.box_weights,
            )
            self._cache[key] = maps.to(dtype=like.dtype)
        return self._cache[key]


def weighted_saliency(activation: torch.Tensor, grad: torch.Tensor, maps: BatchWeightMaps | None) -> torch.Tensor:
    """(B, C) per image and channel: sum over positions of ``M * |A * dU/dA|``.

    ``maps=None`` or an activation without image geometry sums uniformly over every
    dimension but the channel one (then a single row is returned).
    """
    saliency = (activation * grad).abs_()
    if maps is not None and saliency.dim() == 4 and saliency.shape[0] == len(maps.batch):
        weights = maps.at(tuple(saliency.shape[-2:]), saliency)
        return torch.einsum("bchw,bhw->bc", saliency, weights)
    return saliency.transpose(0, 1).reshape(saliency.shape[1], -1).sum(1)[None]


@register_criterion
class BoxWeightedSaliency(Criterion):
    """Box-weighted gradient saliency (Choi & Tian, IEEE IV 2023); see the module docstring."""

    name = "saliency"
    needs_data = True

    def __init__(
        self,
        context: float = 0.5,
        context_scale: float = 1.5,
        background: float = 0.0,
        normalize_boxes: bool = True,
        overlap: str = "sum",
        utility: Utility = "confidence",
        class_weights: Mapping[str, float] | None = None,
        seed: int | None = 0,
        progress: bool = True,
    ) -> None:
        if utility not in UTILITIES:
            raise DetpruneError(f"utility must be one of {', '.join(UTILITIES)}, got {utility!r}")
        self.spec = WeightMapSpec(context, context_scale, background, normalize_boxes, overlap)  # validates
        self.class_weights = check_class_weights(class_weights)
        self.utility = utility
        self.seed = seed
        self.progress = progress
        self.last_stats = ScoringStats()

    def options(self) -> dict:
        """The options that define the scores (written next to them for reproducibility)."""
        return {
            "context": self.spec.context,
            "context_scale": self.spec.context_scale,
            "background": self.spec.background,
            "normalize_boxes": self.spec.normalize_boxes,
            "overlap": self.spec.overlap,
            "utility": self.utility,
            **({"class_weights": dict(self.class_weights)} if self.class_weights else {}),
            "seed": self.seed,
        }

    def weight_table(self, adapter: DetectorAdapter, model: nn.Module) -> torch.Tensor | None:
        """The class weights per label id of ``model`` (None: no weights, or all 1)."""
        return model_weight_table(self.class_weights, adapter, model, self.name)

    def score(self, adapter: DetectorAdapter, model: nn.Module, batches: Iterable[Batch]) -> ChannelScores:
        points = adapter.activation_points(model)
        if not points:
            raise DetpruneError(f"{type(adapter).__name__}: the model has no prunable activation points to score")
        table = self.weight_table(adapter, model)
        stats = ScoringStats()
        self.last_stats = stats
        totals: dict[str, torch.Tensor] = {}
        uniform: set[str] = set()
        current: dict[str, BatchWeightMaps] = {}

        def accumulate(name: str, activation: torch.Tensor, grad: torch.Tensor) -> None:
            maps = current["maps"]
            if not (activation.dim() == 4 and activation.shape[0] == len(maps.batch)):
                uniform.add(name)
            per_image = weighted_saliency(activation, grad, maps).to(torch.float64).sum(0)
            totals[name] = per_image if name not in totals else totals[name] + per_image

        device = model_device(model)
        total = len(batches) if hasattr(batches, "__len__") else None
        with seeded(self.seed, device), scoring_state(model, train=self.utility == "loss"), GradientCapture(
            points, accumulate
        ):
            for batch in progress_bar(batches, total=total, desc="saliency", disable=not self.progress):
                stats.images += len(batch)
                keep = images_with_objects(batch)
                stats.skipped_without_boxes += len(batch) - len(keep)
                if not keep:
                    continue
                batch = select_images(batch, keep).to(device)
                current["maps"] = BatchWeightMaps(batch, self.spec, table)
                value = compute_utility(adapter, model, batch, self.utility)
                if not value.requires_grad:
                    raise DetpruneError(
                        f"{type(adapter).__name__}: the {self.utility} utility does not depend on any activation point"
                    )
                value.backward()
                stats.batches += 1
                current.clear()  # the graph and this batch's maps are freed here
        if stats.scored == 0:
            raise DetpruneError(
                f"the scoring set ({stats.images} images) has no object box; saliency needs images with "
                "ground-truth boxes (ignore regions do not count)"
            )
        stats.uniform_layers = sorted(uniform)
        stats.unreached_layers = [name for name in points if name not in totals]
        return {name: totals[name] if name in totals else self._zeros(model, name) for name in points}

    @staticmethod
    def _zeros(model: nn.Module, name: str) -> torch.Tensor:
        """A layer the utility's gradient never reached scores 0 on every channel."""
        channels = out_channels(model, name)
        if channels is None:
            raise DetpruneError(f"activation point {name!r}: no gradient reached it and its channel count is unknown")
        return torch.zeros(channels, dtype=torch.float64)


@dataclass
class SaliencyMaps:
    """Per-layer maps of one batch, for pictures: weights ``M`` and per-channel ``M * |A dU/dA|``."""

    batch: Batch
    weights: dict[str, torch.Tensor]  # name -> (B, h, w)
    channels: dict[str, torch.Tensor]  # name -> (B, C, h, w)


def saliency_maps(
    adapter: DetectorAdapter,
    model: nn.Module,
    batch: Batch,
    layers: Iterable[str] | None = None,
    criterion: BoxWeightedSaliency | None = None,
) -> SaliencyMaps:
    """The spatial maps behind the scores of ``layers`` (default: all) for one batch.

    Summing ``channels[name]`` over its spatial dimensions and images gives exactly what
    :meth:`BoxWeightedSaliency.score` adds for this batch.
    """
    criterion = criterion or BoxWeightedSaliency()
    points: Mapping[str, nn.Module] = adapter.activation_points(model)
    wanted = list(points) if layers is None else list(layers)
    unknown = [name for name in wanted if name not in points]
    if unknown:
        raise DetpruneError(f"unknown layer(s) {', '.join(unknown)}; choose from the model's activation points")
    device = model_device(model)
    batch = batch.to(device)
    maps = BatchWeightMaps(batch, criterion.spec, criterion.weight_table(adapter, model))
    weights: dict[str, torch.Tensor] = {}
    channels: dict[str, torch.Tensor] = {}

    def keep_maps(name: str, activation: torch.Tensor, grad: torch.Tensor) -> None:
        if activation.dim() != 4 or activation.shape[0] != len(batch) or name in channels:
            return  # pictures need image geometry; a shared module keeps its first call
        weight = maps.at(tuple(activation.shape[-2:]), activation)
        weights[name] = weight.detach().cpu()
        channels[name] = ((activation * grad).abs() * weight[:, None]).detach().cpu()

    with seeded(criterion.seed, device), scoring_state(model, train=criterion.utility == "loss"), GradientCapture(
        {name: points[name] for name in wanted}, keep_maps
    ):
        compute_utility(adapter, model, batch, criterion.utility).backward()
    return SaliencyMaps(batch, weights, channels)
