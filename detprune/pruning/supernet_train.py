"""Training the width supernet with parallel subnets, and using it as an accuracy estimator.

Training (PSE-Net's parallel-subnets estimator, Wang et al., arXiv:2408.16233): each batch is
split into ``subnets_per_step`` slices and slice ``s`` runs subnet ``s`` through per-sample
channel masks (:class:`detprune.pruning.supernet.ChannelMasks`), so ONE forward and backward
trains all of them. The slices always include the largest and the smallest subnet (the
sandwich rule of slimmable networks: the two ends bound every other subnet's weights) and
the rest are drawn from the width prior (:mod:`detprune.pruning.prior`), stratified over
FLOPs. The loss is the adapter's detection loss of the whole masked batch, in train mode with
every norm frozen (``scoring_state``): batch statistics over slices of different subnets would
mix them, and frozen statistics keep the masked supernet equal to the cut model. After every
epoch the prior is updated from the supernet's own losses on a fixed probe minibatch (``probe``;
by default the first batch of the training images, which a small dataset cannot spare).

Estimating: a subnet's fitness is the mAP50 of the masked supernet on a validation subset
(eval mode, every sample the same subnet), cached per subnet.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn

from detprune.adapters.base import DetectorAdapter
from detprune.criteria.hooks import model_device, scoring_state
from detprune.data.batch import Batch, collate, iter_batches
from detprune.data.types import DetectionSet
from detprune.errors import BadInputError
from detprune.pruning.prior import WidthPrior
from detprune.pruning.supernet import ChannelMasks, Subnet, WidthSpace, running
from detprune.utils.progress import progress_bar

DEFAULT_SUBNETS_PER_STEP = 4
GRAD_CLIP = 10.0  # as ultralytics' trainer: the loss is summed over the batch
NOMINAL_BATCH = 64  # ultralytics accumulates gradients to 64 images per optimizer step


@dataclass
class SupernetTraining:
    """What supernet training did: settings, per-epoch loss, the FLOPs of every sampled subnet, time."""

    epochs: int
    steps: int = 0
    subnets_per_step: int = DEFAULT_SUBNETS_PER_STEP
    epoch_loss: list[float] = field(default_factory=list)
    sampled_flops: list[float] = field(default_factory=list)  # prior samples (not the sandwich ends)
    prior_updates: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"epochs": self.epochs, "steps": self.steps, "subnets_per_step": self.subnets_per_step,
                "epoch_loss": self.epoch_loss, "sampled_flops": [round(f, 5) for f in self.sampled_flops],
                "prior_updates": self.prior_updates, "seconds": self.seconds}


def slice_counts(batch_size: int, slices: int) -> list[int]:
    """Samples per slice, as even as possible; at most ``batch_size`` slices."""
    slices = min(slices, batch_size)
    return [len(part) for part in np.array_split(np.arange(batch_size), slices)]


def step_subnets(space: WidthSpace, prior: WidthPrior, count: int, rng: np.random.Generator) -> list[Subnet]:
    """The sandwich: the largest and smallest subnet, then ``count - 2`` drawn from the prior."""
    subnets = [space.largest(), space.smallest()] + [prior.sample(rng) for _ in range(max(count - 2, 0))]
    return subnets[:count]


def train_supernet(
    adapter: DetectorAdapter,
    model: nn.Module,
    masks: ChannelMasks,
    prior: WidthPrior,
    dataset: DetectionSet,
    *,
    epochs: int,
    imgsz: int | Sequence[int] = 320,
    batch_size: int = 8,
    lr: float = 0.01,
    subnets_per_step: int = DEFAULT_SUBNETS_PER_STEP,
    probe: DetectionSet | None = None,
    probe_subnets: int = 8,
    prior_lr: float = 0.5,
    seed: int = 0,
    progress: bool = True,
) -> SupernetTraining:
    """Train ``model``'s weights (in place) as a width supernet; update ``prior`` after every epoch.

    SGD (momentum 0.937, Nesterov, weight decay 5e-4 on conv/linear weights), stepping every
    batch with ``lr x batch_size / 64``: ultralytics' trainer steps once per 64 images with
    clipped gradients, so this moves the weights about as far per image at the same ``lr``
    (stepping with the full ``lr`` every batch wrecked a trained YOLOv5n in one epoch). The rate
    rises linearly over the first epoch (when there are several) and then follows a cosine to a
    hundredth. The images are reshuffled every epoch by ``seed``.
    ``probe``: images whose loss rates the prior's samples (default: the first batch of ``dataset``).
    """
    if epochs < 0 or batch_size < 1 or subnets_per_step < 2 or lr <= 0:
        raise BadInputError("supernet training needs epochs >= 0, batch size >= 1, >= 2 subnets per step and lr > 0")
    if len(dataset) == 0:
        raise BadInputError("supernet training needs images")
    record = SupernetTraining(epochs=epochs, subnets_per_step=subnets_per_step)
    device = model_device(model)
    rng = np.random.default_rng(seed)
    trained = [p for p in model.parameters() if p.requires_grad]  # frozen ones (DFL) stay frozen
    decayed = [p for p in trained if p.dim() > 1]
    rest = [p for p in trained if p.dim() <= 1]
    optimizer = torch.optim.SGD([{"params": decayed, "weight_decay": 5e-4}, {"params": rest, "weight_decay": 0.0}],
                                lr=lr, momentum=0.937, nesterov=True)
    per_epoch = math.ceil(len(dataset) / batch_size)
    step_lr = lr * min(batch_size / NOMINAL_BATCH, 1.0)
    total = max(epochs * per_epoch, 1)
    probe_batch = collate(list(probe if probe is not None else dataset)[:batch_size], imgsz)
    frozen = {p for p in model.parameters() if not p.requires_grad}
    tick = time.perf_counter()
    for epoch in range(epochs):
        order = rng.permutation(len(dataset))
        batches = iter_batches([dataset[int(i)] for i in order], imgsz, batch_size)
        losses = []
        with scoring_state(model, train=True, parameter_grads=True), masks.active():
            for p in frozen:
                p.requires_grad_(False)
            for batch in progress_bar(
                batches, total=per_epoch, desc=f"supernet {epoch + 1}/{epochs}", disable=not progress
            ):
                for group in optimizer.param_groups:
                    group["lr"] = step_lr * _schedule(record.steps, per_epoch if epochs > 1 else 0, total)
                counts = slice_counts(len(batch), subnets_per_step)
                subnets = step_subnets(masks.space, prior, len(counts), rng)
                record.sampled_flops.extend(masks.space.flops_fraction(s) for s in subnets[2:])
                masks.set(subnets, counts, device)
                loss = adapter.detection_loss(model, batch.to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trained, GRAD_CLIP)
                optimizer.step()
                losses.append(float(loss.detach()))
                record.steps += 1
        record.epoch_loss.append(float(np.mean(losses)) if losses else float("nan"))
        if probe_subnets >= 3:
            record.prior_updates.append(
                update_prior(adapter, model, masks, prior, probe_batch, probe_subnets, prior_lr, rng)
            )
    record.seconds = time.perf_counter() - tick
    return record


def _schedule(step: int, warmup: int, total: int) -> float:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then a cosine from 1 to 0.01."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))


def update_prior(
    adapter: DetectorAdapter,
    model: nn.Module,
    masks: ChannelMasks,
    prior: WidthPrior,
    batch: Batch,
    count: int,
    lr: float,
    rng: np.random.Generator,
) -> dict:
    """Score ``count`` stratified samples by minus their loss on ``batch``; move the prior towards the good ones."""
    subnets = [prior.sample(rng) for _ in range(count)]
    device = model_device(model)
    quality = []
    with torch.no_grad(), scoring_state(model, train=True):
        batch = batch.to(device)
        for subnet in subnets:
            with running(masks, subnet, device):
                quality.append(-float(adapter.detection_loss(model, batch)) / len(batch))
    return prior.update(subnets, [masks.space.flops_fraction(s) for s in subnets], quality, lr=lr)


class SupernetEstimator:
    """Fitness of a subnet: ``metric`` (mAP50 by default) of the masked supernet on ``dataset``."""

    def __init__(self, adapter: DetectorAdapter, model: nn.Module, masks: ChannelMasks, dataset: DetectionSet, *,
                 imgsz: int | Sequence[int] = 320, batch_size: int = 8, metric: str = "mAP50"):
        if len(dataset) == 0:
            raise BadInputError("the supernet estimator needs validation images")
        self.adapter, self.model, self.masks, self.dataset, self.metric = adapter, model, masks, dataset, metric
        self.batches = list(iter_batches(dataset, imgsz, batch_size))  # decoded once, reused by every subnet
        self.cache: dict[Subnet, float] = {}
        self.seconds = 0.0

    def __call__(self, subnet: Subnet) -> float:
        from detprune.evaluation.protocol import evaluate_detections

        subnet = self.masks.space.check(subnet)
        if subnet not in self.cache:
            tick = time.perf_counter()
            device = model_device(self.model)
            predictions = []
            was_training = self.model.training
            self.model.eval()
            try:
                with torch.no_grad(), running(self.masks, subnet, device):
                    for batch in self.batches:
                        predictions.extend(self.adapter.predict(self.model, batch.to(device)))
            finally:
                self.model.train(was_training)
            value = evaluate_detections(self.dataset, predictions).get(self.metric)
            self.cache[subnet] = float(value) if value is not None else 0.0
            self.seconds += time.perf_counter() - tick
        return self.cache[subnet]
