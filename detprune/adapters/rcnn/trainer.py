"""Fine-tuning a (pruned) torchvision Faster R-CNN, keeping its widths.

The recipe is torchvision's detection reference (SGD with momentum, a linear warm-up from
1/1000 of the learning rate over the first iterations, the learning rate divided by 10 at
fixed epochs, mixed precision on CUDA) scaled to fine-tuning: few epochs, small batches,
and the norms frozen (``FrozenBatchNorm2d``), as torchvision fine-tunes its detectors, since
batch statistics of one or two images are noise.

The model is trained in place; after every ``val_every`` epochs it is scored on the
validation set with the evaluation protocol of :mod:`detprune.evaluation.protocol`, the best
weights (by ``metric``) are kept and written to ``out_dir/best.pt``, and the model returned
carries them. Without a validation set the last epoch's weights are returned.
``out_dir/last.pt`` and ``out_dir/train_log.json`` (loss, learning rate and metrics per
epoch) are written too, atomically.

With a ``teacher`` (the unpruned model) the student also learns from it: box-masked FPN
imitation and a KL term on the RoI class logits (:mod:`detprune.adapters.rcnn.distill`); the
checkpoints hold the student alone.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from detprune.adapters.base import DetectorAdapter
from detprune.adapters.rcnn.rewrites import freeze_batchnorm
from detprune.data.batch import Batch, collate
from detprune.data.types import DetectionSet
from detprune.errors import BadInputError, DetpruneError
from detprune.utils.atomic import write_text
from detprune.utils.progress import progress_bar


@dataclass
class TrainOptions:
    """Fine-tuning settings (keyword options of ``RcnnAdapter.finetune``)."""

    imgsz: int | tuple[int, int] | None = None  # None: the adapter's default (a KITTI frame at its own scale)
    batch_size: int = 2
    lr: float = 0.01  # torchvision's 0.02 for 16 images, scaled down for fine-tuning with small batches
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 200  # capped at the first epoch's length
    warmup_factor: float = 1e-3
    lr_steps: Sequence[float] = (2 / 3, 8 / 9)  # fractions of the epochs after which lr *= gamma
    gamma: float = 0.1
    freeze_norm: bool = True
    clip_grad_norm: float | None = None
    amp: bool | None = None  # None: on where the device is CUDA
    device: str | None = None  # None: CUDA when present, else CPU
    metric: str = "mAP50"
    val_every: int = 1
    seed: int = 0
    max_iters_per_epoch: int | None = None
    progress: bool = True


def split_data(data: Any) -> tuple[DetectionSet, DetectionSet | None]:
    """``DetectionSet`` (train only), ``(train, val)`` or ``{"train": ..., "val": ...}``."""
    if isinstance(data, DetectionSet):
        return data, None
    if isinstance(data, dict) and "train" in data:
        train, val = data["train"], data.get("val")
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        train, val = data
    else:
        raise BadInputError(
            f"fine-tuning data must be a DetectionSet, (train, val) or {{'train': ..., 'val': ...}}, got "
            f"{type(data).__name__}"
        )
    for part, value in (("train", train), ("val", val)):
        if value is not None and not isinstance(value, DetectionSet):
            raise BadInputError(f"fine-tuning data: {part} must be a DetectionSet, got {type(value).__name__}")
    if not len(train):
        raise BadInputError(f"fine-tuning data: the training set {train.name!r} has no images")
    return train, (val if val is not None and len(val) else None)


def _options(options: dict) -> TrainOptions:
    known = {f.name for f in fields(TrainOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise DetpruneError(f"unknown fine-tuning option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    opts = TrainOptions(**options)
    if opts.batch_size < 1 or opts.lr <= 0 or opts.val_every < 1:
        raise DetpruneError("fine-tuning needs batch_size >= 1, lr > 0 and val_every >= 1")
    return opts


def _batches(dataset: DetectionSet, order: Sequence[int], imgsz, batch_size: int) -> Iterator[Batch]:
    samples = dataset.samples
    for start in range(0, len(order), batch_size):
        yield collate([samples[i] for i in order[start : start + batch_size]], imgsz)


def lr_factor(
    iteration: int,
    *,
    iters_per_epoch: int,
    warmup_iters: int,
    warmup_factor: float,
    milestones: Sequence[int],
    gamma: float,
) -> float:
    """Multiplier of the base learning rate at ``iteration`` (0-based, counted over all epochs)."""
    factor = 1.0
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        factor = warmup_factor * (1 - alpha) + alpha
    epoch = iteration // max(iters_per_epoch, 1)
    return factor * gamma ** sum(epoch >= m for m in milestones)


def finetune(
    adapter: DetectorAdapter, model: nn.Module, data: Any, *, epochs: int, out_dir: str | Path,
    teacher: nn.Module | None = None, distill_weight: float | None = None, **options: Any
) -> nn.Module:
    """Train ``model`` (in place) for ``epochs`` and return it with its best weights; see the module docstring.

    ``teacher``: the unpruned model to distil from (frozen in place: eval mode, no gradient);
    ``distill_weight`` scales its loss (default 1.0).
    """
    from detprune.train.distill import check_weight

    opts = _options(options)
    check_weight(distill_weight)
    if distill_weight is not None and teacher is None:
        raise BadInputError("a distillation weight needs a teacher (the unpruned model)")
    train_set, val_set = split_data(data)
    if epochs < 1:
        raise DetpruneError(f"epochs must be at least 1, got {epochs}")
    out_dir = Path(out_dir)
    imgsz = opts.imgsz or adapter.default_imgsz()
    device = torch.device(opts.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    amp = (device.type == "cuda") if opts.amp is None else bool(opts.amp and device.type == "cuda")

    model.to(device)
    if opts.freeze_norm:
        freeze_batchnorm(model)
    params = [p for p in model.parameters() if p.requires_grad]
    distiller = None
    if teacher is not None:  # built before the seed below, so RoI sampling draws as without a teacher
        from detprune.adapters.rcnn.distill import DEFAULT_WEIGHT, RcnnDistiller

        weight = DEFAULT_WEIGHT if distill_weight is None else distill_weight
        distiller = RcnnDistiller(teacher.to(device), model, weight).to(device)
        params += list(distiller.parameters())  # the adapter: trained with the student, never saved
    optimizer = torch.optim.SGD(params, lr=opts.lr, momentum=opts.momentum, weight_decay=opts.weight_decay)
    iters_per_epoch = math.ceil(len(train_set) / opts.batch_size)
    if opts.max_iters_per_epoch:
        iters_per_epoch = min(iters_per_epoch, opts.max_iters_per_epoch)
    milestones = sorted({max(1, round(f * epochs)) for f in opts.lr_steps if round(f * epochs) < epochs})
    schedule = dict(
        iters_per_epoch=iters_per_epoch, warmup_iters=min(opts.warmup_iters, iters_per_epoch),
        warmup_factor=opts.warmup_factor, milestones=milestones, gamma=opts.gamma,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, **schedule))
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    generator = torch.Generator().manual_seed(opts.seed)
    torch.manual_seed(opts.seed)  # RPN / RoI sampling draws from the global generator

    best_value, best_state, history = -math.inf, None, []
    meta = {"finetune": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(opts).items()}}
    meta["finetune"]["distill_weight"] = distiller.weight if distiller is not None else None
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(train_set), generator=generator).tolist()[: iters_per_epoch * opts.batch_size]
        bar = progress_bar(
            _batches(train_set, order, imgsz, opts.batch_size),
            total=iters_per_epoch,
            desc=f"finetune {epoch}/{epochs}",
            disable=not opts.progress,
        )
        losses, distilled = [], []
        capturing = distiller.capturing(model) if distiller is not None else contextlib.nullcontext()
        with capturing:  # hooks on the student only while it trains, not while it is evaluated
            for iteration, batch in enumerate(bar):
                with torch.autocast(device.type, enabled=amp):
                    batch = batch.to(device)
                    loss = adapter.detection_loss(model, batch)
                    if distiller is not None:
                        extra, parts = distiller.loss(batch)
                        loss = loss + extra
                        distilled.append(parts)
                if not torch.isfinite(loss):
                    raise DetpruneError(
                        f"fine-tuning loss became {loss.item()} at epoch {epoch}, iteration {iteration + 1}; "
                        f"lower lr (now {opts.lr}) or set clip_grad_norm"
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if opts.clip_grad_norm:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, opts.clip_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                losses.append(float(loss.detach()))
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
        record: dict[str, Any] = {
            "epoch": epoch,
            "loss": sum(losses) / max(len(losses), 1),
            "lr": optimizer.param_groups[0]["lr"],
        }
        if distilled:
            record["distill"] = {k: sum(p[k] for p in distilled) / len(distilled) for k in distilled[0]}
        if val_set is not None and (epoch % opts.val_every == 0 or epoch == epochs):
            metrics = adapter.evaluate(model, val_set, imgsz=imgsz, batch_size=opts.batch_size, progress=opts.progress)
            if opts.metric not in metrics:
                raise DetpruneError(
                    f"metric {opts.metric!r} is not among the evaluation's: {', '.join(sorted(metrics))}"
                )
            record["metrics"] = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
            value = float(metrics[opts.metric])
            if value > best_value or best_state is None:
                best_value = value
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                adapter.save(model, out_dir / "best.pt", meta={**meta, "epoch": epoch, opts.metric: value})
        history.append(record)
        write_text(
            out_dir / "train_log.json",
            json.dumps({"options": meta["finetune"], "epochs": history}, indent=2, default=str),
        )
    adapter.save(model, out_dir / "last.pt", meta={**meta, "epoch": epochs})
    if best_state is not None:
        model.load_state_dict(best_state)
    return model.eval()
