"""An ultralytics ``DetectionTrainer`` that trains the (pruned) module it is given.

The stock trainer builds its model from the architecture yaml and copies matching weights
into it (``DetectionTrainer.get_model``); for a pruned model that would silently bring back
the unpruned widths, or drop every pruned layer's weights. Here the model always comes from a
checkpoint that holds the pruned module itself (the start checkpoint of a new run, ``last.pt``
of a resumed one, or the module a DDP worker receives), and ``get_model`` refuses to build one
from yaml. Everything else -- data loading, augmentation, loss, optimizer, EMA, validation,
early stopping, DDP -- is ultralytics' own.

Two behaviours differ from the stock trainer, on purpose:

* checkpoints are FP32 (ultralytics halves the EMA when saving), so ``best.pt`` holds exactly
  the weights that were validated and a resumed run continues from unrounded weights;
* checkpoints are written atomically, so an interrupted run never leaves a truncated file.
"""

from __future__ import annotations

import io
from copy import deepcopy
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn
from ultralytics import __version__ as ULTRALYTICS_VERSION
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.utils import DEFAULT_CFG, DEFAULT_CFG_DICT, DEFAULT_CFG_KEYS, LOCAL_RANK, LOGGER, RANK
from ultralytics.utils.torch_utils import torch_distributed_zero_first, unwrap_model

from detprune import __version__ as DETPRUNE_VERSION
from detprune.errors import BadInputError, DetpruneError
from detprune.adapters.yolo.distill import strip_distillation, student_of, without_feature_hooks
from detprune.adapters.yolo.guards import trainer_guards
from detprune.train.structure import check_same_structure, tensor_shapes
from detprune.utils.atomic import atomic_path, write_bytes
from detprune.utils.checkpoints import load_torch_file

# Checkpoint keys that only a resumable (unfinished) run needs.
_TRAINING_STATE = ("optimizer", "best_fitness", "stopper", "ema", "updates", "scaler")


def head_classes(model: nn.Module) -> int:
    """Number of classes the model's detection head predicts."""
    return int(model.model[-1].nc)


def make_trainable(model: nn.Module) -> nn.Module:
    """FP32, every floating parameter trainable, no loss criterion cached with other hyperparameters."""
    model = model.float()
    for p in model.parameters():
        if p.is_floating_point():
            p.requires_grad_(True)
    if hasattr(model, "criterion"):
        model.criterion = None  # rebuilt on first use from the trainer's args (box/cls/dfl gains)
    return model


def write_model_checkpoint(model: nn.Module, path: str | Path) -> Path:
    """An ultralytics checkpoint holding ``model`` itself (FP32), for the trainer to start from."""
    from detprune.adapters.yolo import YoloAdapter

    return YoloAdapter().save(model, path, meta={"version": DETPRUNE_VERSION, "role": "start"})


def finalize_checkpoint(path: str | Path, updates: dict[str, Any] | None = None) -> dict:
    """Drop the optimizer and training state from a checkpoint, keeping the EMA weights in FP32.

    The same result as ``ultralytics.utils.torch_utils.strip_optimizer`` except for precision
    (it converts the model to FP16). Returns the rewritten checkpoint.
    """
    ckpt = load_torch_file(path)  # restricted unpickler: the file is read back, never trusted blindly
    model = strip_distillation(ckpt.get("ema") or ckpt["model"])  # the student alone: no teacher, projector
    if hasattr(model, "args") and not isinstance(model.args, dict):
        model.args = dict(vars(model.args))
    if hasattr(model, "criterion"):
        model.criterion = None
    model.float()
    for p in model.parameters():
        p.requires_grad_(False)
    args = {**DEFAULT_CFG_DICT, **ckpt.get("train_args", {})}
    ckpt.update({key: None for key in _TRAINING_STATE})
    ckpt.update(
        model=model,
        epoch=-1,
        train_args={k: v for k, v in args.items() if k in DEFAULT_CFG_KEYS},
        date=datetime.now(timezone.utc).isoformat(),
        **(updates or {}),
    )
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(ckpt, tmp)
    return ckpt


class PrunedDetectionTrainer(DetectionTrainer):
    """``DetectionTrainer`` that keeps the model's own (pruned) shapes and saves FP32 checkpoints.

    Constructed like any ultralytics trainer (``overrides`` with ``model=<checkpoint.pt>``), so
    the DDP workers ultralytics launches rebuild it the same way.
    """

    def __init__(self, cfg=DEFAULT_CFG, overrides: dict | None = None, _callbacks: dict | None = None):
        self.structure: dict[str, tuple[int, ...]] | None = None  # shapes of the model being trained
        self.class_weight_table: torch.Tensor | None = None  # set by finetune_yolo: classes put first
        with trainer_guards():  # the dataset check in __init__ would ask for a font online
            super().__init__(cfg, overrides, _callbacks)

    def train(self):
        with trainer_guards():
            return super().train()

    # --- the model: always the given module, never one rebuilt from yaml --------------------
    def setup_model(self):
        ckpt = None if isinstance(self.model, nn.Module) else super().setup_model()
        student = make_trainable(student_of(self.model))  # a resumed distillation run gives the wrapper
        self.structure = tensor_shapes(student)
        return ckpt

    def set_class_weights(self):
        """ultralytics' own per-class BCE weights (``model.class_weights``, read by its detection
        loss): the table given to this run, else its ``cls_pw`` frequency weights. A weight a
        checkpoint carries from an earlier run is dropped first, so a run weighs classes only
        when asked to."""
        student = student_of(unwrap_model(self.model))
        student.class_weights = None
        if self.class_weight_table is None:
            return super().set_class_weights()
        student.class_weights = self.class_weight_table.float().to(self.device)
        LOGGER.info(f"Class weights: {student.class_weights.cpu().numpy().round(3)}")

    def get_model(self, cfg=None, weights=None, verbose: bool = True):
        if not isinstance(weights, nn.Module):
            raise DetpruneError(
                "the trainer was asked to build a model from its architecture yaml, which would undo pruning; "
                "start it from a checkpoint that holds the pruned model (model=<file>.pt, pretrained=True)"
            )
        return weights  # a fresh module unpickled from the checkpoint

    def set_model_attributes(self):
        if head_classes(student_of(self.model)) != self.data["nc"]:
            raise BadInputError(
                f"{self.args.data}: the dataset has {self.data['nc']} classes but the model's head predicts "
                f"{head_classes(student_of(self.model))}; re-head the model for the dataset's classes before pruning"
            )
        super().set_model_attributes()

    def _setup_train(self):
        super()._setup_train()
        check_same_structure(self.structure, student_of(unwrap_model(self.model)), "the model the trainer trains")
        check_same_structure(self.structure, student_of(self.ema.ema), "the trainer's EMA model")

    # --- checkpoints: FP32, atomic ------------------------------------------------------------
    def _ema_snapshot(self) -> nn.Module:
        """An FP32, contiguous copy of the EMA, repaired first where a transient NaN/Inf reached it."""
        ema = self.ema.ema
        live = unwrap_model(self.model).state_dict()
        for key, value in ema.state_dict().items():
            # one non-finite update poisons the running average forever; the live weights are the best repair
            if value.is_floating_point() and not torch.isfinite(value).all() and torch.isfinite(live[key]).all():
                value.copy_(live[key])
        snapshot = deepcopy(ema).float().to(memory_format=torch.contiguous_format)
        without_feature_hooks(snapshot)  # distillation: the hooks come back when the wrapper is unpickled
        if hasattr(snapshot, "criterion"):
            snapshot.criterion = None
        return snapshot

    def save_model(self):
        """Write ``last.pt`` (and ``best.pt`` when this epoch is the best so far) in FP32."""
        ckpt = {
            "epoch": self.epoch,
            "best_fitness": self.best_fitness,
            "stopper": {"best_fitness": self.stopper.best_fitness, "best_epoch": self.stopper.best_epoch},
            "model": None,  # resume and the final checkpoints use the EMA, as in ultralytics
            "ema": self._ema_snapshot(),
            "updates": self.ema.updates,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "train_args": vars(self.args),
            "train_metrics": {**self.metrics, "fitness": self.fitness},
            "train_results": self.read_results_csv(),
            "date": datetime.now(timezone.utc).isoformat(),
            "version": ULTRALYTICS_VERSION,
            "detprune": {"version": DETPRUNE_VERSION, "precision": "fp32"},
        }
        buffer = io.BytesIO()
        torch.save(ckpt, buffer)
        data = buffer.getvalue()
        write_bytes(self.last, data)
        if self.best_fitness == self.fitness:
            write_bytes(self.best, data)
        if self.save_period > 0 and self.epoch % self.save_period == 0:
            write_bytes(self.wdir / f"epoch{self.epoch}.pt", data)
        return True

    def final_eval(self):
        """Finalize ``last.pt`` and ``best.pt`` in FP32 and validate ``best.pt`` as ultralytics does."""
        with torch_distributed_zero_first(LOCAL_RANK):
            if RANK in {-1, 0}:
                last = finalize_checkpoint(self.last) if self.last.exists() else {}
                if self.best.exists():
                    finalize_checkpoint(self.best, {"train_results": last.get("train_results")})
        if not self.best.exists():
            return
        LOGGER.info(f"\nValidating {self.best}...")
        self.validator.args.plots = self.args.plots
        self.validator.args.compile = False
        self.metrics = self.validator(model=self.best)
        self.metrics.pop("fitness", None)
        self.epoch += 1  # loggers record the best model's metrics one step after the last epoch
        self.run_callbacks("on_fit_epoch_end")
        self.epoch -= 1
