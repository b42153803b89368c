"""The adapter interface: the only code that knows a detector family.

Criteria, the pruner, the trainer and the exporter see a detector through this contract
alone. An adapter is stateless; the model is always passed in, so one adapter serves the
original and the pruned model alike.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from detprune.data.batch import Batch
from detprune.data.types import DetectionSet, Detections
from detprune.utils.seeding import INIT_SEED

from detprune.defaults import EVAL_CONF, EVAL_MAX_DET, EVAL_MULTI_LABEL  # noqa: F401  (re-exported)


class DetectorAdapter(ABC):
    """One detector family (ultralytics YOLO, torchvision Faster R-CNN, ...)."""

    family: ClassVar[str]
    # NMS IoU of predict() when none is given; None: the model's own setting
    nms_iou: ClassVar[float | None] = None

    # --- loading -------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def handles(cls, spec: str | Path) -> bool:
        """Whether ``spec`` (a weights file, an architecture name or yaml) is this family's."""

    @abstractmethod
    def load(self, spec: str | Path, *, weights: str | Path | None = None, class_names: Sequence[str] | None = None,
             init_seed: int = INIT_SEED) -> nn.Module:
        """Build or read the model; ``class_names`` re-heads it for a dataset's classes.

        Fresh weights (a yaml's layers, a new class head) are drawn under ``init_seed``
        (:func:`detprune.utils.seeding.seeded_init`), so one command builds one model in every run.
        """

    @abstractmethod
    def class_names(self, model: nn.Module) -> list[str]:
        """The classes the model predicts, in label order."""

    # --- pruning ---------------------------------------------------------------------
    @abstractmethod
    def prepare_for_pruning(self, model: nn.Module) -> nn.Module:
        """Apply the numerically exact rewrites that make channel coupling traceable."""

    @abstractmethod
    def example_inputs(self, model: nn.Module, imgsz: int | Sequence[int] = 320, batch_size: int = 1) -> torch.Tensor:
        """An input the dependency graph traces and FLOPs are counted on."""

    @abstractmethod
    def protected_layers(self, model: nn.Module) -> list[nn.Module]:
        """Layers whose output channels must stay: predictors, DFL, attention internals."""

    @abstractmethod
    def activation_points(self, model: nn.Module) -> dict[str, nn.Module]:
        """Prunable conv name -> the module whose output is that conv's activation.

        The activation has one channel per output channel of the conv (after its norm and
        non-linearity where they follow), and is what saliency criteria hook.
        """

    # --- objective -------------------------------------------------------------------
    @abstractmethod
    def detection_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """The family's training loss (a scalar) for a batch with targets; model in train mode."""

    @abstractmethod
    def detection_utility(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """A scalar that grows as the model detects the batch's GT boxes better.

        Default definition: sum over GT boxes of the predicted confidence of the box's class
        at the prediction locations assigned to that box. Differentiable w.r.t. activations.
        """

    @abstractmethod
    def predict(self, model: nn.Module, batch: Batch, *, conf: float = EVAL_CONF, iou: float | None = None,
                max_det: int = EVAL_MAX_DET, multi_label: bool = EVAL_MULTI_LABEL) -> list[Detections]:
        """Post-processed detections, in original-image pixels, one per image (``iou=None``: :attr:`nms_iou`).

        ``multi_label``: a box scoring above ``conf`` in several classes gives one detection per
        class (ultralytics' val NMS), not only its best one; a family whose post-processing is
        per-class already ignores it.
        """

    # --- training, files ---------------------------------------------------------------
    @abstractmethod
    def finetune(self, model: nn.Module, data: Any, *, epochs: int, out_dir: str | Path, **options: Any) -> nn.Module:
        """Fine-tune keeping the (pruned) structure; returns the best model."""

    @abstractmethod
    def save(self, model: nn.Module, path: str | Path, meta: dict | None = None) -> Path:
        """Write a checkpoint with the model's own (possibly pruned) shapes, atomically."""

    @abstractmethod
    def load_checkpoint(self, path: str | Path) -> nn.Module:
        """Reload what :meth:`save` wrote, pruned shapes included."""

    def export_module(self, model: nn.Module) -> nn.Module:
        """The model as it is exported: one image tensor in, plain tensors out (no Python objects)."""
        return model

    # --- shared behaviour ---------------------------------------------------------------
    def default_imgsz(self) -> int | tuple[int, int]:
        return 640

    def input_stride(self, model: nn.Module) -> int:
        """The multiple every input side must be (the rect letterbox rounds to it)."""
        return 32

    def evaluate(self, model: nn.Module, dataset: DetectionSet, *, kitti_protocol: str | None = None,
                 **options) -> dict:
        """Score :meth:`predictions` (``options`` are its keywords) with the COCO (and KITTI) protocol.

        ``kitti_protocol`` (None: the default) passes to
        :func:`~detprune.evaluation.protocol.evaluate_detections`.
        """
        from detprune.evaluation.protocol import evaluate_detections

        return evaluate_detections(dataset, self.predictions(model, dataset, **options), kitti_protocol=kitti_protocol)

    def predictions(
        self,
        model: nn.Module,
        dataset: DetectionSet,
        *,
        imgsz: int | Sequence[int] | None = None,
        batch_size: int = 8,
        progress: bool = True,
        conf: float = EVAL_CONF,
        iou: float | None = None,
        max_det: int = EVAL_MAX_DET,
        multi_label: bool = EVAL_MULTI_LABEL,
        letterbox: str = "square",
    ) -> list[Detections]:
        """:meth:`predict` over ``dataset`` in order, one :class:`Detections` per image."""
        from detprune.data.batch import iter_batches
        from detprune.utils.progress import progress_bar

        imgsz = imgsz or self.default_imgsz()
        model.eval()
        predictions: list[Detections] = []
        batches = iter_batches(dataset, imgsz, batch_size, letterbox=letterbox, stride=self.input_stride(model))
        total = (len(dataset) + batch_size - 1) // batch_size
        with torch.no_grad():
            for batch in progress_bar(batches, total=total, desc="evaluate", disable=not progress):
                predictions.extend(self.predict(model, batch, conf=conf, iou=iou, max_det=max_det, multi_label=multi_label))
        return predictions
