"""Faster R-CNN's objective on a detprune :class:`~detprune.data.batch.Batch`: loss, utility, predictions.

Label mapping: torchvision reserves class 0 for background, so detprune label ``k``
(0..K-1, indexing ``class_names``) is torchvision label ``k + 1`` and a model for K classes
has ``num_classes = K + 1``. Ignore boxes (``ignore`` flag or label -1) are left out of the
targets: torchvision has no ignore regions, and an ignored object must not be taught as
background either way, so it simply does not take part.

Image size: ``GeneralizedRCNNTransform`` resizes every image so that its short side is
``min_size``. Batches are already letterboxed to the size the caller chose, so while the
model runs here its transform is set to keep that size (``min_size = short side``,
``max_size = long side``: the resize factor is exactly 1) and boxes stay in input pixels.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models.detection.rpn import concat_box_prediction_layers
from torchvision.ops import box_iou

from detprune.data.batch import Batch
from detprune.data.types import Detections
from detprune.errors import DetpruneError

MIN_BOX_SIDE = 1.0  # input pixels; torchvision rejects boxes of zero width or height
ROI_MATCH_IOU = 0.5  # a proposal serves a GT box from this IoU on (Fast R-CNN's foreground threshold)
_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


@contextlib.contextmanager
def input_size_kept(model: nn.Module, hw: tuple[int, int]) -> Iterator[None]:
    """Make the model's transform keep images of size ``hw`` as they are (scale factor 1)."""
    transform = model.transform
    saved = (transform.min_size, transform.max_size, getattr(transform, "fixed_size", None))
    transform.min_size = (int(min(hw)),)
    transform.max_size = int(max(hw))
    transform.fixed_size = None
    try:
        yield
    finally:
        transform.min_size, transform.max_size, transform.fixed_size = saved


@contextlib.contextmanager
def modes(model: nn.Module, *, train: bool, norms_too: bool = False) -> Iterator[None]:
    """Layers in train or eval mode for the block; normalisation layers keep the mode they had
    unless ``norms_too`` (so a scoring pass with frozen norms stays frozen); every flag is
    restored afterwards."""
    saved = {module: module.training for module in model.modules()}
    try:
        for module in model.modules():
            if norms_too or not isinstance(module, _NORM_TYPES):
                module.training = train
        yield
    finally:
        for module, flag in saved.items():
            module.training = flag


@contextlib.contextmanager
def postprocess_settings(model: nn.Module, *, conf: float, iou: float, max_det: int) -> Iterator[None]:
    heads = model.roi_heads
    saved = (heads.score_thresh, heads.nms_thresh, heads.detections_per_img)
    heads.score_thresh, heads.nms_thresh, heads.detections_per_img = float(conf), float(iou), int(max_det)
    try:
        yield
    finally:
        heads.score_thresh, heads.nms_thresh, heads.detections_per_img = saved


def targets_of(batch: Batch, device: torch.device) -> list[dict[str, torch.Tensor]]:
    """torchvision targets: object boxes (input pixels, clipped) and labels + 1; ignore boxes left out."""
    height, width = batch.images.shape[-2:]
    targets = []
    for boxes, labels, ignore in zip(batch.boxes, batch.labels, batch.ignore):
        boxes = boxes.to(device=device, dtype=torch.float32).reshape(-1, 4).clone()
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        labels = labels.to(device=device, dtype=torch.int64).reshape(-1)
        keep = ~ignore.to(device=device, dtype=torch.bool).reshape(-1) & (labels >= 0)
        keep &= ((boxes[:, 2] - boxes[:, 0]) >= MIN_BOX_SIDE) & ((boxes[:, 3] - boxes[:, 1]) >= MIN_BOX_SIDE)
        targets.append({"boxes": boxes[keep], "labels": labels[keep] + 1})
    return targets


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _images(model: nn.Module, batch: Batch) -> list[torch.Tensor]:
    param = next(model.parameters())
    return list(batch.images.to(device=param.device, dtype=param.dtype).unbind(0))


def detection_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """The sum of torchvision's four training losses (RPN objectness and box, RoI class and box).

    A model in eval mode is run with its heads in train mode for the call (norms untouched),
    because torchvision computes losses only in train mode.
    """
    hw = tuple(batch.images.shape[-2:])
    targets = targets_of(batch, _device(model))
    with input_size_kept(model, hw), (contextlib.nullcontext() if model.training else modes(model, train=True)):
        losses = model(_images(model, batch), targets)
    if not isinstance(losses, dict) or not losses:
        raise DetpruneError(f"{type(model).__name__}: expected a dict of training losses from the model")
    return torch.stack([value.reshape(()) for value in losses.values()]).sum()


def detection_utility(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Sum over GT boxes of how confidently the two stages find them; differentiable.

    For every object box: the mean RPN objectness (sigmoid) over the anchors the RPN's own
    matcher assigns to it (IoU >= 0.7, plus each box's best anchors), plus the mean softmax
    probability of its class over the proposals that overlap it with IoU >= 0.5. Proposals
    are the RPN's test-time proposals with the GT boxes appended (as torchvision does in
    training), so every box has at least one. One forward pass in eval mode.
    """
    hw = tuple(batch.images.shape[-2:])
    device = _device(model)
    targets = targets_of(batch, device)
    with input_size_kept(model, hw), modes(model, train=False, norms_too=True):
        image_list, _ = model.transform(_images(model, batch))
        features = model.backbone(image_list.tensors)
        levels = list(features.values())
        rpn = model.rpn
        objectness, deltas = rpn.head(levels)
        anchors = rpn.anchor_generator(image_list, levels)
        per_level = [int(o[0].numel()) for o in objectness]
        flat_objectness, flat_deltas = concat_box_prediction_layers(objectness, deltas)
        num_images = len(anchors)
        decoded = rpn.box_coder.decode(flat_deltas.detach(), anchors).view(num_images, -1, 4)
        proposals, _ = rpn.filter_proposals(decoded, flat_objectness, image_list.image_sizes, per_level)
        objectness_per_image = flat_objectness.view(num_images, -1)

        total = flat_objectness.sum() * 0.0  # keeps the graph when the batch has no object box
        rois = [torch.cat([p, t["boxes"].to(p.dtype)]) for p, t in zip(proposals, targets)]
        box_features = model.roi_heads.box_head(model.roi_heads.box_roi_pool(features, rois, image_list.image_sizes))
        class_logits, _ = model.roi_heads.box_predictor(box_features)
        probabilities = F.softmax(class_logits, dim=-1).split([len(r) for r in rois])
        for i, target in enumerate(targets):
            gt = target["boxes"]
            if not len(gt):
                continue
            matched = rpn.proposal_matcher(box_iou(gt, anchors[i]))  # anchor -> GT index, negative if none
            assigned = F.one_hot(matched.clamp(min=0), len(gt)).to(objectness_per_image.dtype) * (matched >= 0)[:, None]
            counts = assigned.sum(0).clamp(min=1)
            total = total + ((torch.sigmoid(objectness_per_image[i])[:, None] * assigned).sum(0) / counts).sum()

            overlaps = (box_iou(gt, rois[i]) >= ROI_MATCH_IOU).to(probabilities[i].dtype)  # (G, R)
            class_probability = probabilities[i][:, target["labels"]].t()  # (G, R): P(class of GT g) at RoI r
            total = total + ((class_probability * overlaps).sum(1) / overlaps.sum(1).clamp(min=1)).sum()
    return total


@torch.no_grad()
def predict(model: nn.Module, batch: Batch, *, conf: float, iou: float, max_det: int) -> list[Detections]:
    """Detections in original-image pixels, labels 0-based (torchvision label - 1)."""
    hw = tuple(batch.images.shape[-2:])
    settings = postprocess_settings(model, conf=conf, iou=iou, max_det=max_det)
    with input_size_kept(model, hw), modes(model, train=False, norms_too=True), settings:
        outputs = model(_images(model, batch))
    results = []
    for out, lb, sample in zip(outputs, batch.letterboxes, batch.samples):
        boxes = lb.to_original(out["boxes"].float().cpu().numpy())
        boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, sample.width)
        boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, sample.height)
        results.append(Detections(boxes, out["scores"].float().cpu().numpy(), out["labels"].cpu().numpy() - 1))
    return results
