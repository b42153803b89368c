"""Pruning schedules: how far to cut at each step, on which images to score and train.

A schedule is a list of :class:`Step`: the FLOPs to keep after the step (a fraction of the
ORIGINAL model's), the images the channels are scored on, the images trained on after the
cut, and the epochs. :func:`detprune.workflow.progressive.run_schedule` drives the pruner
and the trainer through it. Three builders:

- :func:`one_shot_steps`: cut to the target once, then train (the classic recipe);
- :func:`iterative_steps`: ``k`` cuts along a sparsity schedule, training on all the data
  between them;
- :func:`progressive_steps`: Anytime Progressive Pruning (APP; D. Misra, B. Mittal, V. Ng,
  "APP: Anytime Progressive Pruning", arXiv 2204.01640). The training data arrives in ``T``
  megabatches (a fleet uploading drives week by week). At megabatch ``t`` the model is cut to
  the ``t``-th point of a schedule that reaches the target at ``T``, scored on a sample of the
  data seen so far, then trained on megabatch ``t`` plus a replay of the earlier ones, so it
  is usable ("anytime") after every megabatch. The official code prunes single weights with
  SNIP and fully replays; this is its structured (channel) analogue.

Sparsity schedules (:func:`flops_schedule`) give the FLOPs kept after each of ``steps``
steps, ending exactly at the target:

- ``linear``: equal FLOPs removed per step;
- ``cubic``: M. Zhu and S. Gupta, "To prune, or not to prune", 2017: removed fraction
  ``(1 - target) * (1 - (1 - t/T)^3)``; fast early, while the network is redundant, slow late;
- ``geometric``: APP's official density ``0.8^s`` with ``s = linspace(1, 4.5, T)``, rescaled
  to end at the target: kept ``target ** (s_t / s_T)``, a constant ratio between steps
  (for ``target = 0.8^4.5`` it is the official schedule).

Equal budgets. Schedules are compared at the same number of image-passes: the sum over steps
of (images trained on) x (epochs) (:func:`image_passes`). APP with ``T = 4`` megabatches of
15 frames, full replay and 2 epochs per step trains ``2 x (15 + 30 + 45 + 60) = 300``;
:func:`epochs_for_budget` gives the epochs per step that make another schedule match it
(one-shot: 5 epochs on 60 frames; iterative with 5 steps: 1 epoch each).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from detprune.data.folds import seeded_partition
from detprune.data.types import DetectionSet
from detprune.errors import DetpruneError
from detprune.pruning.pruner import GroupRemoval
from detprune.pruning.targets import check_fraction

KINDS: tuple[str, ...] = ("linear", "cubic", "geometric")
# APP's official exponent range: density 0.8 ** linspace(1, 4.5, N)
_APP_BASE, _APP_FIRST, _APP_LAST = 0.8, 1.0, 4.5


# --- sparsity schedules -------------------------------------------------------------------------


def flops_schedule(kind: str, steps: int, target: float) -> list[float]:
    """FLOPs kept (fractions of the original) after each of ``steps`` steps; the last is ``target``."""
    if kind not in KINDS:
        raise DetpruneError(f"unknown sparsity schedule {kind!r}; choose from {', '.join(KINDS)}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise DetpruneError(f"a schedule needs a whole number of steps >= 1, got {steps!r}")
    target = check_fraction("target FLOPs", target)
    t = np.arange(1, steps + 1) / steps
    if kind == "linear":
        kept = 1.0 - (1.0 - target) * t
    elif kind == "cubic":
        kept = 1.0 - (1.0 - target) * (1.0 - (1.0 - t) ** 3)
    else:
        s = np.linspace(_APP_FIRST, _APP_LAST, steps)
        kept = target ** (s / s[-1])
    values = [float(v) for v in kept]
    values[-1] = float(target)  # exactly, not up to rounding
    return values


# --- data ---------------------------------------------------------------------------------------


def megabatch_indices(size: int, count: int, seed: int) -> list[list[int]]:
    """A seeded split of ``range(size)`` into ``count`` parts whose sizes differ by at most one."""
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise DetpruneError(f"the number of megabatches must be a whole number >= 1, got {count!r}")
    if count > size:
        raise DetpruneError(f"cannot split {size} images into {count} megabatches (at most one per image)")
    return seeded_partition(size, count, seed)


def split_megabatches(dataset: DetectionSet, count: int, seed: int = 0) -> list[DetectionSet]:
    """``dataset`` as ``count`` seeded, (nearly) equal megabatches, each in dataset order."""
    return [dataset.subset(part) for part in megabatch_indices(len(dataset), count, seed)]


def _sample(indices: Sequence[int], count: int | None, seed: int) -> list[int]:
    """``count`` of ``indices`` chosen by ``seed`` (all when ``count`` is None or larger), sorted."""
    if count is None or count >= len(indices):
        return sorted(indices)
    chosen = np.random.default_rng(seed).choice(len(indices), count, replace=False)
    return sorted(int(indices[i]) for i in chosen)


# --- steps --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One step of a schedule: cut to ``flops``, score on ``score_on``, train on ``train_on``."""

    flops: float  # FLOPs to keep after the cut, fraction of the ORIGINAL model's
    score_on: DetectionSet  # images the channels are scored on
    train_on: DetectionSet  # images trained on after the cut
    epochs: int
    seen: DetectionSet  # every training image seen up to this step (train mAP is sampled from it)

    def describe(self) -> dict:
        return {"flops": self.flops, "scored_images": len(self.score_on), "trained_images": len(self.train_on),
                "epochs": self.epochs, "seen_images": len(self.seen)}


def one_shot_steps(train: DetectionSet, target: float, *, epochs: int, score_images: int | None = None,
                   seed: int = 0) -> list[Step]:
    """Cut to ``target`` once, scored on (a sample of) ``train``, then ``epochs`` on all of it."""
    return iterative_steps(train, 1, target, epochs=epochs, score_images=score_images, seed=seed)


def iterative_steps(train: DetectionSet, steps: int, target: float, *, kind: str = "linear", epochs: int = 1,
                    score_images: int | None = None, seed: int = 0) -> list[Step]:
    """``steps`` cuts along the ``kind`` schedule, each followed by ``epochs`` on all of ``train``."""
    _check_epochs(epochs)
    everything = list(range(len(train)))
    return [Step(flops, train.subset(_sample(everything, score_images, seed + t)), train, epochs, train)
            for t, flops in enumerate(flops_schedule(kind, steps, target))]


def progressive_steps(train: DetectionSet, megabatches: int, target: float, *, kind: str = "linear",
                      replay: float = 1.0, epochs: int = 1, score_images: int | None = None,
                      seed: int = 0) -> list[Step]:
    """APP: at megabatch ``t`` cut to the schedule's ``t``-th point, scored on a sample of
    megabatches ``1..t``, then train on megabatch ``t`` plus ``replay`` (a fraction, seeded) of
    the images of the earlier ones; 1.0 replays them all, as the official code does."""
    _check_epochs(epochs)
    if not 0.0 <= float(replay) <= 1.0:
        raise DetpruneError(f"replay is a fraction of the earlier images in [0, 1], got {replay}")
    parts = megabatch_indices(len(train), megabatches, seed)
    steps = []
    for t, flops in enumerate(flops_schedule(kind, megabatches, target)):
        earlier = [i for part in parts[:t] for i in part]
        seen = sorted(earlier + parts[t])
        replayed = _sample(earlier, int(round(replay * len(earlier))), seed + 1000 + t)
        steps.append(Step(flops, train.subset(_sample(seen, score_images, seed + t)),
                          train.subset(sorted(parts[t] + replayed)), epochs, train.subset(seen)))
    return steps


def _check_epochs(epochs: int) -> None:
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise DetpruneError(f"epochs per step must be a whole number >= 1, got {epochs!r}")


# --- budgets ------------------------------------------------------------------------------------


def image_passes(steps: Sequence[Step]) -> int:
    """The training budget of a schedule: sum over steps of images trained on x epochs."""
    return sum(len(step.train_on) * step.epochs for step in steps)


def epochs_for_budget(budget: int, images_per_step: Sequence[int]) -> int:
    """Epochs per step that make a schedule training on ``images_per_step`` spend exactly
    ``budget`` image-passes (an error when no whole number does)."""
    per_epoch = sum(images_per_step)
    if per_epoch <= 0 or budget <= 0 or budget % per_epoch:
        raise DetpruneError(f"{budget} image-passes is not a whole number of epochs over {per_epoch} images per epoch "
                            f"(steps of {list(images_per_step)} images)")
    return budget // per_epoch


# --- what a sequence of cuts removed ------------------------------------------------------------


def compose_removals(channels_before: dict[str, int], cuts: Sequence[Sequence[GroupRemoval]]) -> list[GroupRemoval]:
    """The removals of successive cuts, each numbered in the model it cut, as one cut of the
    original model (original numbering, one record per group root), so that
    :func:`detprune.pruning.apply_removals` replays the whole schedule on a fresh copy."""
    alive = {name: list(range(width)) for name, width in channels_before.items()}  # original index per position
    merged: dict[str, GroupRemoval] = {}
    for removals in cuts:
        translated = []
        for r in removals:
            layers = {name: [alive[name][i] for i in idx] for name, idx in r.layers.items()}
            translated.append((r, [alive[r.root][i] for i in r.channels], layers))
        gone: dict[str, set[int]] = {}  # positions cut per layer, renumbered once the whole cut is read
        for r, channels, layers in translated:
            for name, idx in r.layers.items():
                gone.setdefault(name, set()).update(idx)
            entry = merged.setdefault(r.root, GroupRemoval(r.group, r.root, [], {}))
            entry.channels = sorted(entry.channels + channels)
            for name, idx in layers.items():
                entry.layers[name] = sorted(entry.layers.get(name, []) + idx)
        for name, positions in gone.items():
            alive[name] = [c for i, c in enumerate(alive[name]) if i not in positions]
    return list(merged.values())
