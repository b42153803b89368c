"""Train a baseline until its validation curve flattens, within a cap of epochs.

A baseline that is still improving makes every later comparison a comparison of training
time: a pruned model fine-tuned a few more epochs beats it for that reason alone. The rule
here (:class:`Flatness`) watches the validation mAP50-95 the trainer computes after each
epoch and stops when the best of the last ``window`` epochs gains less than ``min_gain``
(a fraction of the best before them) over everything earlier; ``max_epochs`` bounds the time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from detprune.adapters.base import DetectorAdapter
from detprune.data.types import DetectionSet

VAL_KEY = "metrics/mAP50-95(B)"  # ultralytics' per-epoch validation of the box mAP50-95


@dataclass
class Flatness:
    """Stop rule and record of a training curve (one validation mAP50-95 per epoch)."""

    window: int = 5
    min_gain: float = 0.02
    curve: list[float] = field(default_factory=list)
    flattened: bool = False
    _done: bool = False

    def describe(self) -> str:
        return (
            f"stop when the best val mAP50-95 of the last {self.window} epochs is less than "
            f"{self.min_gain:.0%} above the best of all earlier epochs (checked from epoch {2 * self.window})"
        )

    def is_flat(self) -> bool:
        """Whether the curve so far meets the rule (needs ``2 * window`` epochs)."""
        if len(self.curve) < 2 * self.window:
            return False
        recent, earlier = max(self.curve[-self.window :]), max(self.curve[: -self.window])
        return earlier > 0 and recent - earlier < self.min_gain * earlier

    def on_fit_epoch_end(self, trainer: Any) -> None:
        """ultralytics callback: record the epoch's validation, stop the trainer once flat.

        The trainer calls it once more after the loop for the final validation of ``best``;
        the run has stopped by then (``trainer.stop``), so that call is not an epoch.
        """
        if self._done:
            return
        value = (trainer.metrics or {}).get(VAL_KEY)
        if value is not None:
            self.curve.append(float(value))
        if self.is_flat():
            self.flattened = True
            trainer.stop = True
        self._done = bool(trainer.stop)

    def record(self, max_epochs: int) -> dict:
        """What the report keeps: the rule, the epochs trained and the curve."""
        return {
            "rule": self.describe(),
            "max_epochs": max_epochs,
            "epochs": len(self.curve),
            "flattened": self.flattened,
            "val_mAP50-95": [round(v, 4) for v in self.curve],
        }


def train_until_flat(
    adapter: DetectorAdapter,
    model: nn.Module,
    train: DetectionSet,
    val: DetectionSet,
    *,
    max_epochs: int,
    rule: Flatness,
    out_dir,
    on_epoch: Any = None,
    **options: Any,
) -> nn.Module:
    """Train ``model`` from where it is, validating every epoch, until ``rule`` says flat or ``max_epochs``.

    ``rule.curve`` holds the validation mAP50-95 of each epoch trained; YOLO only (the curve
    comes from ultralytics' trainer callbacks). ``on_epoch(trainer)`` is called after each epoch too.
    """
    from detprune.errors import UnsupportedError
    from detprune.workflow.stages import finetune_variant

    if not adapter.epoch_callbacks:
        raise UnsupportedError(
            f"training until the validation curve flattens needs a trainer that reports every epoch's validation; "
            f"{adapter.family}'s does not"
        )

    def after_epoch(trainer: Any) -> None:
        rule.on_fit_epoch_end(trainer)
        if on_epoch is not None:
            on_epoch(trainer)

    return finetune_variant(
        adapter,
        model,
        train,
        val,
        epochs=max_epochs,
        out_dir=out_dir,
        label="baseline epochs",
        callbacks={"on_fit_epoch_end": after_epoch},
        val_every_epoch=True,
        **options,
    )
