"""What a YOLO model is judged by: ultralytics' loss, a detection utility, post-processed detections.

Everything here delegates to ultralytics (``init_criterion``, ``TaskAlignedAssigner``,
``non_max_suppression``) and only converts between detprune's ``Batch`` and ultralytics' forms.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from detprune.data.batch import Batch
from detprune.data.types import Detections
from detprune.errors import BadInputError


def default_hyperparameters(overrides: Any = None):
    """ultralytics' default training settings (loss gains box / cls / dfl ...) as its namespace type."""
    from ultralytics.cfg import DEFAULT_CFG_DICT
    from ultralytics.utils import IterableSimpleNamespace

    values = dict(DEFAULT_CFG_DICT)
    if isinstance(overrides, dict):
        values.update(overrides)
    elif overrides is not None:
        values.update(vars(overrides))
    return IterableSimpleNamespace(**values)


def _ensure_hyperparameters(model: nn.Module) -> None:
    # the criterion reads model.args.box etc. as attributes; checkpoints carry a plain dict
    args = getattr(model, "args", None)
    if args is None or isinstance(args, dict):
        model.args = default_hyperparameters(args)


def _head(model: nn.Module):
    return model.model[-1]


def rehead(model: nn.Module, class_names: list[str]) -> None:
    """Give ``model`` the dataset's classes; a new class count gets freshly initialised class predictors.

    Only the final 1x1 class convolutions change, so this works on pruned models too.
    """
    if not class_names:
        raise BadInputError("class_names is empty; a detector needs at least one class")
    head = _head(model)
    nc = len(class_names)
    if nc != head.nc:
        from detprune.utils.checkpoints import notice

        notice(f"class head re-initialised for {nc} classes ({', '.join(map(str, class_names))}); "
               f"the model had {head.nc}: its class predictors start new, the rest keeps its weights")
        for name in ("cv3", "one2one_cv3"):
            branches = getattr(head, name, None)
            if branches is None:
                continue
            for i, branch in enumerate(branches):
                old = branch[-1]
                new = nn.Conv2d(old.in_channels, nc, 1).to(device=old.weight.device, dtype=old.weight.dtype)
                stride = float(head.stride[i]) if head.stride.numel() > i and head.stride[i] > 0 else 8.0 * 2**i
                with torch.no_grad():  # ultralytics' prior: about 0.01 objects per anchor at 640 px
                    new.bias.fill_(torch.log(torch.tensor(5 / nc / (640 / stride) ** 2)).item())
                branch[-1] = new
        head.nc = nc
        head.no = nc + head.reg_max * 4
        if hasattr(model, "yaml") and isinstance(model.yaml, dict):
            model.yaml["nc"] = nc
    model.names = {i: str(n) for i, n in enumerate(class_names)}
    model.criterion = None


def ultralytics_targets(batch: Batch, device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """detprune Batch -> the ultralytics training batch dict (normalised xywh, ignore boxes dropped)."""
    images = batch.images if device is None else batch.images.to(device)
    height, width = images.shape[-2:]
    scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=images.device)
    idx, cls, boxes = [], [], []
    for i, (b, labels, ignore) in enumerate(zip(batch.boxes, batch.labels, batch.ignore)):
        keep = (~ignore.bool()) & (labels >= 0)
        b = b[keep].to(device=images.device, dtype=torch.float32)
        xywh = torch.cat(((b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2]), 1) / scale
        boxes.append(xywh)
        cls.append(labels[keep].to(device=images.device, dtype=torch.float32))
        idx.append(torch.full((len(b),), float(i), device=images.device))
    return {
        "img": images,
        "batch_idx": torch.cat(idx) if idx else torch.zeros(0, device=images.device),
        "cls": (torch.cat(cls) if cls else torch.zeros(0, device=images.device)).view(-1, 1),
        "bboxes": torch.cat(boxes) if boxes else torch.zeros(0, 4, device=images.device),
    }


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _check_labels(model: nn.Module, targets: dict[str, torch.Tensor]) -> None:
    nc = _head(model).nc
    if targets["cls"].numel() and int(targets["cls"].max()) >= nc:
        raise BadInputError(f"batch has class index {int(targets['cls'].max())} but the model predicts {nc} classes")


def detection_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """ultralytics' loss for the model's head: ``v8DetectionLoss`` or YOLO26's ``E2ELoss``.

    The sum of the weighted box, class and DFL (or L1) terms times the batch size, exactly as
    the ultralytics trainer back-propagates it. Works in train or eval mode (in eval mode BN
    uses running statistics).
    """
    _ensure_hyperparameters(model)
    targets = ultralytics_targets(batch, _device(model))
    _check_labels(model, targets)
    criterion = model.init_criterion()  # fresh: a cached one may hold another device or class count
    preds = model(targets["img"])
    loss, _ = criterion(preds, targets)
    return loss.sum()


def weighted_detection_loss(model: nn.Module, batch: Batch, box_weights: list[torch.Tensor]) -> torch.Tensor:
    """:func:`detection_loss` with each GT box's terms scaled by its weight (``box_weights``: per
    image, one per box of ``batch.boxes``; ignore boxes' weights are unused).

    An anchor assigned to a box has its class BCE and its box/DFL terms multiplied by that box's
    weight; unassigned anchors and the normaliser (the sum of target scores) are left as they are,
    so weights of 1 give :func:`detection_loss`. Done by wrapping the fresh criterion's assigner,
    BCE and box loss (ultralytics' v8 loss, also both branches of YOLO26's).
    """
    _ensure_hyperparameters(model)
    device = _device(model)
    targets = ultralytics_targets(batch, device)
    _check_labels(model, targets)
    kept = [w.to(device, torch.float32).reshape(-1)[((~ignore.bool()) & (labels >= 0)).to(device)]
            for w, labels, ignore in zip(box_weights, batch.labels, batch.ignore)]
    criterion = model.init_criterion()
    parts = [getattr(criterion, "one2many", None), getattr(criterion, "one2one", None)]
    parts = [criterion] if parts[0] is None else parts
    for part in parts:
        if not all(hasattr(part, a) for a in ("assigner", "bce", "bbox_loss")):
            raise BadInputError(f"the loss of this YOLO head ({type(part).__name__}) cannot weigh its boxes")
        _weigh_boxes(part, kept)
    loss, _ = criterion(model(targets["img"]), targets)
    return loss.sum()


def _weigh_boxes(loss: Any, kept: list[torch.Tensor]) -> None:
    """Scale, per anchor, the BCE and box terms of ``loss`` (one v8 loss instance) by its box's weight."""
    assign, bce, bbox = loss.assigner, loss.bce, loss.bbox_loss
    anchor: dict[str, torch.Tensor] = {}

    def assigner(*args, **kwargs):
        out = assign(*args, **kwargs)
        fg_mask, gt_idx = out[3], out[4].long()
        width = max(int(args[3].shape[1]), 1)  # the padded boxes per image (args: scores, boxes, anchors, labels, ...)
        padded = torch.ones(len(kept), width, device=gt_idx.device)
        for i, w in enumerate(kept):
            padded[i, :len(w)] = w
        anchor["w"] = torch.where(fg_mask.bool(), padded.gather(1, gt_idx.clamp(max=width - 1)), 1.0)
        return out

    loss.assigner = assigner
    loss.bce = lambda pred, target: bce(pred, target) * anchor["w"][..., None].to(pred.dtype)
    loss.bbox_loss = lambda dist, boxes, points, target_boxes, scores, *rest: bbox(
        dist, boxes, points, target_boxes, scores * anchor["w"][..., None].to(scores.dtype), *rest)


def _raw_one2many(preds: Any) -> dict[str, torch.Tensor]:
    raw = preds[1] if isinstance(preds, tuple) else preds
    return raw["one2many"] if "one2many" in raw else raw


def detection_utility(model: nn.Module, batch: Batch, *, utility: str = "score") -> torch.Tensor:
    """A differentiable scalar that grows as the model detects the batch's GT boxes better.

    ``utility="score"``: the sum, over GT boxes, of the detection quality at the anchor points
    that ultralytics' ``TaskAlignedAssigner`` (with the model's own criterion settings: topk 10,
    alpha 0.5, beta 6) assigns to that box; the quality of an anchor is the sigmoid score of
    the box's class times the IoU of the anchor's predicted box with the GT box, so that both
    the classification and the box-regression branch are differentiated. One forward pass in eval mode
    (BatchNorm uses running statistics) with gradients enabled. YOLO26's dual head is read on
    its one-to-many branch, the branch that trains the backbone and that the assigner settings
    above belong to. ``utility="loss"``: minus :func:`detection_loss`, also in eval mode.
    """
    if utility not in ("score", "loss"):
        raise BadInputError(f"utility={utility!r}: expected 'score' or 'loss'")
    from ultralytics.utils.tal import make_anchors

    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            if utility == "loss":
                return -detection_loss(model, batch)
            _ensure_hyperparameters(model)
            targets = ultralytics_targets(batch, _device(model))
            _check_labels(model, targets)
            criterion = model.init_criterion()
            criterion = getattr(criterion, "one2many", criterion)
            raw = _raw_one2many(model(targets["img"]))
            return _assigned_score(criterion, raw, targets, make_anchors)
    finally:
        model.train(was_training)


def _assigned_score(
    criterion, raw: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], make_anchors
) -> torch.Tensor:
    from ultralytics.utils.metrics import bbox_iou

    pred_scores = raw["scores"].permute(0, 2, 1)  # (B, anchors, nc) logits
    pred_dist = raw["boxes"].permute(0, 2, 1).contiguous()
    feats = raw["feats"]
    anchor_points, stride_tensor = make_anchors(feats, criterion.stride, 0.5)
    imgsz = torch.tensor(feats[0].shape[2:], device=pred_scores.device, dtype=pred_scores.dtype) * criterion.stride[0]
    gt = torch.cat((targets["batch_idx"].view(-1, 1), targets["cls"].view(-1, 1), targets["bboxes"]), 1)
    gt = criterion.preprocess(gt.to(pred_scores.device), pred_scores.shape[0], scale_tensor=imgsz[[1, 0, 1, 0]])
    gt_labels, gt_bboxes = gt.split((1, 4), 2)
    mask_gt = gt_bboxes.sum(2, keepdim=True).gt_(0.0)
    scores = pred_scores.sigmoid()
    if gt_bboxes.shape[1] == 0:
        return scores.sum() * 0.0  # no objects: zero, still connected to the graph
    pred_bboxes = criterion.bbox_decode(anchor_points, pred_dist)
    _, _, _, fg_mask, target_gt_idx = criterion.assigner(
        scores.detach(),
        (pred_bboxes.detach() * stride_tensor).type(gt_bboxes.dtype),
        anchor_points * stride_tensor,
        gt_labels,
        gt_bboxes,
        mask_gt,
    )
    index = target_gt_idx.long()
    anchor_labels = gt_labels.squeeze(-1).long().gather(1, index)  # class of the assigned box
    assigned = scores.gather(2, anchor_labels.unsqueeze(-1)).squeeze(-1)
    # Detection quality = class confidence x overlap of the predicted box with its GT box, so the
    # box-regression branch (which the class score alone never reaches) is judged too.
    assigned_boxes = gt_bboxes.gather(1, index.unsqueeze(-1).expand(-1, -1, 4))
    overlap = bbox_iou(pred_bboxes * stride_tensor, assigned_boxes, xywh=False).squeeze(-1).clamp(min=0)
    return (assigned * overlap * fg_mask.to(assigned.dtype)).sum()


def predict(model: nn.Module, batch: Batch, *, conf: float, iou: float, max_det: int,
            multi_label: bool = False) -> list[Detections]:
    """Eval forward, ultralytics NMS (or the one-to-one head's top-k), boxes in original pixels."""
    head = _head(model)
    end2end = bool(getattr(model, "end2end", False))
    saved_max_det = head.max_det
    was_training = model.training
    model.eval()
    head.max_det = max_det  # the one-to-one head's top-k reads it
    try:
        with torch.no_grad():
            out = model(batch.images.to(_device(model)))
    finally:
        head.max_det = saved_max_det
        model.train(was_training)
    return postprocess(out, batch, nc=head.nc, end2end=end2end, conf=conf, iou=iou, max_det=max_det,
                       multi_label=multi_label)


def postprocess(raw: Any, batch: Batch, *, nc: int, end2end: bool, conf: float, iou: float, max_det: int,
                multi_label: bool = False) -> list[Detections]:
    """The model's (or its exported graph's) raw output -> detections in original-image pixels.

    ``raw``: (B, 4 + nc, anchors) xywh in input pixels, or (B, max_det, 6) rows for a one-to-one
    (``end2end``) head; an eval forward's (output, features) tuple is taken as is.
    ``multi_label``: a box gives one detection per class above ``conf`` (ultralytics' val does
    this) instead of one for its best class; a one-to-one head's rows are kept as they are.
    """
    from ultralytics.utils.nms import non_max_suppression

    rows = non_max_suppression(raw, conf, iou, max_det=max_det, nc=nc, end2end=end2end, multi_label=multi_label)
    detections = []
    for i, row in enumerate(rows):
        row = row.detach().float().cpu().numpy()
        boxes = batch.letterboxes[i].to_original(row[:, :4])
        if i < len(batch.samples):
            sample = batch.samples[i]
            boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, sample.width)
            boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, sample.height)
        detections.append(Detections(boxes, row[:, 4], row[:, 5].astype("int64")))
    return detections
