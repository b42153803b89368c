"""Spatial weight maps: where on a feature map the ground-truth objects (and their context) are.

The box-weighted saliency criterion (:mod:`detprune.criteria.saliency`) multiplies each
channel's saliency by a map ``M`` drawn from the GT boxes at the activation's own
resolution. This module draws that map.

Rasterisation is by *area overlap*, not centre sampling: a cell's weight is the fraction of
the cell that a box covers. A 6x6 px pedestrian on a stride-32 level covers about 3.5% of
one cell; centre sampling would hand it either a whole cell or nothing, area overlap gives
it exactly its share (and, with per-box normalisation, its full unit mass).

For one image with object boxes ``b`` (ignore regions excluded) the map is::

    core_b(h, w)  = area(cell(h, w) ∩ b) / area(cell)
    ring_b(h, w)  = area(cell ∩ grow(b, context_scale)) / area(cell) - core_b(h, w)
    m_b           = core_b + context * ring_b
    m_b          /= sum(m_b)                          (normalize_boxes=True)
    m_b          *= class_weight(b)                   (class priorities; 1 without)
    objects       = sum_b m_b                          (overlap="sum")  or  max_b m_b  ("max")
    outside(h, w) = 1 - max_b area(cell ∩ grow(b)) / area(cell)
    M             = objects + background * outside [/ sum(outside) when normalize_boxes]
    M            *= 1 - max_r area(cell ∩ r) / area(cell)   for ignore regions r

``grow`` scales a box about its centre by ``context_scale`` in width and height.

Why ``overlap="sum"`` by default: with per-box normalisation the sum gives every box
exactly unit mass whatever its neighbours, so the criterion is a plain sum of one term per
object. Under ``max``, a box partly hidden behind another loses mass where the other's
weight is larger, which penalises exactly the crowded small objects (groups of
pedestrians, a cyclist beside a car) this criterion exists to protect. ``max`` is offered
for maps without normalisation, where it keeps every weight in [0, 1].

A class weight scales a box's whole mass (its core and its ring), so with normalisation a
box of a class weighted 3 counts as three boxes of weight 1; the background term is not a
class and keeps its weight.

Ignore regions (KITTI ``DontCare``) override everything: a cell they cover completely has
weight 0, a cell they cover in part keeps the uncovered share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch

from detprune.errors import DetpruneError

Overlap = Literal["sum", "max"]


@dataclass(frozen=True)
class WeightMapSpec:
    """How boxes become weights; the options of the saliency criterion's spatial map.

    ``context``: weight of the ring around each box (the box grown by ``context_scale``).
    ``background``: weight of everything outside the grown boxes (with ``normalize_boxes``
    it is the mass of the whole background, relative to one object's unit mass).
    ``normalize_boxes``: give each box unit mass so small objects count as much as large.
    ``overlap``: combine overlapping boxes by ``"sum"`` (default) or ``"max"``.
    """

    context: float = 0.5
    context_scale: float = 1.5
    background: float = 0.0
    normalize_boxes: bool = True
    overlap: Overlap = "sum"

    def __post_init__(self) -> None:
        if not self.context >= 0 or not self.background >= 0:
            raise DetpruneError(f"context ({self.context}) and background ({self.background}) must be >= 0")
        if not self.context_scale >= 1:
            raise DetpruneError(
                f"context_scale must be >= 1 (the ring is the box grown by it), got {self.context_scale}"
            )
        if self.overlap not in ("sum", "max"):
            raise DetpruneError(f"overlap must be 'sum' or 'max', got {self.overlap!r}")


def grow_boxes(boxes: torch.Tensor, scale: float) -> torch.Tensor:
    """Scale xyxy boxes about their centres by ``scale`` in width and height."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) * (scale / 2)
    return torch.cat([centre - half, centre + half], dim=1)


def _axis_coverage(lo: torch.Tensor, hi: torch.Tensor, cells: int, cell_size: float) -> torch.Tensor:
    """(N, cells): the fraction of each cell along one axis that the interval [lo, hi] covers."""
    edges = torch.arange(cells + 1, dtype=lo.dtype, device=lo.device) * cell_size
    start = torch.maximum(lo[:, None], edges[None, :-1])
    end = torch.minimum(hi[:, None], edges[None, 1:])
    return (end - start).clamp_(min=0) / cell_size


def box_coverage(boxes: torch.Tensor, input_hw: Sequence[int], map_hw: Sequence[int]) -> torch.Tensor:
    """(N, h, w): the fraction of each cell of an (h, w) map covered by each box.

    ``boxes`` are xyxy in pixels of an input of size ``input_hw``; the map spans that
    input, so a cell is ``input / map`` pixels on each axis. Parts outside the input count
    for nothing.
    """
    in_h, in_w = (float(v) for v in input_hw)
    h, w = (int(v) for v in map_hw)
    boxes = boxes.to(torch.float64).reshape(-1, 4)
    cover_y = _axis_coverage(boxes[:, 1], boxes[:, 3], h, in_h / h)
    cover_x = _axis_coverage(boxes[:, 0], boxes[:, 2], w, in_w / w)
    return cover_y[:, :, None] * cover_x[:, None, :]


def batch_weight_maps(
    boxes: Sequence[torch.Tensor],
    ignore: Sequence[torch.Tensor],
    input_hw: Sequence[int],
    map_hw: Sequence[int],
    spec: WeightMapSpec = WeightMapSpec(),
    device: torch.device | str | None = None,
    box_weights: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """(B, h, w) float64 weight maps of a batch (see the module docstring for the formula).

    ``box_weights``: per image, a weight per box (its class's priority) scaling that box's
    mass; None weighs every box 1.

    All boxes of the batch are drawn at once, on ``device`` (default: the CPU), so the cost
    does not grow with Python loops over images.
    """
    device = torch.device(device or "cpu")
    h, w = (int(v) for v in map_hw)
    count = len(boxes)
    all_boxes = (
        torch.cat([b.detach().reshape(-1, 4).to(device, torch.float64) for b in boxes]) if count else torch.zeros(0, 4)
    )
    image = (
        torch.cat([torch.full((len(b.reshape(-1, 4)),), i, dtype=torch.long) for i, b in enumerate(boxes)]).to(device)
        if count
        else torch.zeros(0, dtype=torch.long)
    )
    flags = (
        torch.cat([i.detach().reshape(-1).to(device, torch.bool) for i in ignore])
        if count
        else torch.zeros(0, dtype=torch.bool)
    )
    if len(flags) != len(all_boxes):
        raise DetpruneError(f"{len(all_boxes)} boxes but {len(flags)} ignore flags")

    def per_image_max(values: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(count, h * w, dtype=torch.float64, device=device)
        if len(owner):  # values are >= 0, so starting from zeros is the plain maximum
            out.scatter_reduce_(0, owner[:, None].expand(-1, h * w), values.reshape(len(owner), -1), "amax")
        return out.view(count, h, w)

    objects, owners = all_boxes[~flags], image[~flags]
    weights = torch.zeros(count, h, w, dtype=torch.float64, device=device)
    covered = weights
    if len(objects):
        core = box_coverage(objects, input_hw, map_hw)
        grown = box_coverage(grow_boxes(objects, spec.context_scale), input_hw, map_hw)
        masks = core.add_((grown - core).clamp_(min=0), alpha=spec.context)
        if spec.normalize_boxes:
            mass = masks.sum(dim=(1, 2), keepdim=True)
            masks = torch.where(mass > 0, masks / mass.clamp(min=1e-300), masks)
        if box_weights is not None:
            scale = torch.cat([w.detach().reshape(-1).to(device, torch.float64) for w in box_weights])
            if len(scale) != len(flags):
                raise DetpruneError(f"{len(flags)} boxes but {len(scale)} box weights")
            masks = masks * scale[~flags][:, None, None]
        weights = weights.index_add_(0, owners, masks) if spec.overlap == "sum" else per_image_max(masks, owners)
        if spec.background > 0:
            covered = per_image_max(grown, owners)

    if spec.background > 0:
        outside = 1 - covered
        if spec.normalize_boxes:
            outside = outside / outside.sum(dim=(1, 2), keepdim=True).clamp(min=1e-300)
        weights = weights + spec.background * outside

    if bool(flags.any()):
        regions = box_coverage(all_boxes[flags], input_hw, map_hw)
        weights = weights * (1 - per_image_max(regions, image[flags]))
    return weights


def image_weight_map(
    boxes: torch.Tensor,
    ignore: torch.Tensor,
    input_hw: Sequence[int],
    map_hw: Sequence[int],
    spec: WeightMapSpec = WeightMapSpec(),
) -> torch.Tensor:
    """The (h, w) float64 weight map of one image."""
    return batch_weight_maps([boxes], [ignore], input_hw, map_hw, spec)[0]
