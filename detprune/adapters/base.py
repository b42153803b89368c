"""The adapter interface and the family registry: the only contract that knows detector families.

Criteria, the pruner, the trainer and the exporter see a detector through this contract
alone. An adapter is stateless; the model is always passed in, so one adapter serves the
original and the pruned model alike.

A family is one package under ``detprune/adapters/`` plus one line in :data:`FAMILIES` (or a
:func:`register_family` call from outside detprune). Every capability a stage may use is declared
here with a default, so stages never probe an adapter with ``getattr``.
"""

from __future__ import annotations

import dataclasses
import importlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import nn

from detprune.data.batch import Batch
from detprune.data.types import DetectionSet, Detections
from detprune.errors import BadInputError, UnsupportedError
from detprune.utils.seeding import INIT_SEED

from detprune.defaults import EVAL_CONF, EVAL_MAX_DET, EVAL_MULTI_LABEL  # noqa: F401  (re-exported)


@dataclasses.dataclass
class FinetuneOptions:
    """Family-neutral fine-tuning settings; each family maps them onto its own trainer's names
    (:attr:`DetectorAdapter.finetune_names`). None: the family trainer's default."""

    imgsz: int | Sequence[int] | None = None
    batch: int | None = None
    lr: float | None = None
    device: str | None = None
    workers: int | None = None
    seed: int | None = None
    patience: int | None = None
    val_every_epoch: bool | None = None  # False: validate after the last epoch only (that epoch is returned)
    teacher: nn.Module | None = None  # the unpruned model to distil from
    distill_weight: float | None = None
    label: str | None = None  # what the epoch progress display is called
    callbacks: dict[str, Callable] | None = None  # trainer events -> callables (families with epoch_callbacks)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # family-specific trainer options, as named there

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> "FinetuneOptions":
        """Known names to fields, the rest to :attr:`extra`."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in options.items() if k in names}
        extra = {k: v for k, v in options.items() if k not in names}
        return cls(**known, extra=extra)

    def as_dict(self) -> dict[str, Any]:
        """The settings given, ``extra`` merged in; None (the trainer's default) left out."""
        given = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {k: v for k, v in {**given, **self.extra}.items() if v is not None}


# (RoI reader, the feature level it reads, the pooling op): where a latency table times RoI pooling
RoiPoint = tuple[nn.Module, nn.Module, nn.Module]
# ONNX post-processing: (raw output of the exported graph, the batch) -> detections per image
PostProcess = Callable[[Any, Batch], list[Detections]]


class DetectorAdapter(ABC):
    """One detector family (ultralytics YOLO, torchvision Faster R-CNN, ...)."""

    family: ClassVar[str]
    # NMS IoU of predict() when none is given; None: the model's own setting
    nms_iou: ClassVar[float | None] = None
    # family-neutral FinetuneOptions names -> this family trainer's names; None drops the option
    finetune_names: ClassVar[dict[str, str | None]] = {}
    # whether finetune() honours FinetuneOptions.callbacks (per-epoch validation curves)
    epoch_callbacks: ClassVar[bool] = False
    # module trees whose classes this family's pickled checkpoints hold (safe loading's allow-list;
    # detprune.utils.checkpoints.MODULE_TREES must cover them, which a test checks)
    safe_load_modules: ClassVar[tuple[str, ...]] = ()
    # the loss with per-box weights (class priorities), or None where the family cannot weigh boxes:
    # ``weighted_detection_loss(model, batch, box_weights) -> scalar``
    weighted_detection_loss: ClassVar[Callable[..., torch.Tensor] | None] = None

    @classmethod
    def owns(cls, model: nn.Module) -> bool:
        """Whether ``model`` (a built module) is of this family."""
        return False

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

    #: the run folder a training run writes inside its ``out_dir``; None for a family whose
    #: training writes its checkpoints into ``out_dir`` itself
    run_name: ClassVar[str | None] = None
    #: whether :meth:`train_run` can continue an interrupted run from its folder (``resume=True``)
    resumes_runs: ClassVar[bool] = False

    def train_run(self, model: nn.Module | None, data: Any, *, epochs: int | None, out_dir: str | Path,
                  **options: Any) -> Any:
        """Train through the family's own trainer; returns its run record (``best``, ``last``,
        ``metrics``, ``seconds``). The CLI's ``train`` and ``finetune`` call this, never a trainer."""
        raise UnsupportedError(f"{self.family}: no training run of its own; fine-tune with detprune finetune")

    def data_class_names(self, data: str | Path) -> list[str]:
        """The class names, in index order, of the training data ``data`` as :meth:`train_run` reads it."""
        raise UnsupportedError(f"{self.family}: reads no training data files of its own")

    @abstractmethod
    def save(self, model: nn.Module, path: str | Path, meta: dict | None = None) -> Path:
        """Write a checkpoint with the model's own (possibly pruned) shapes, atomically."""

    @abstractmethod
    def load_checkpoint(self, path: str | Path) -> nn.Module:
        """Reload what :meth:`save` wrote, pruned shapes included."""

    def export_module(self, model: nn.Module) -> nn.Module:
        """The model as it is exported: one image tensor in, plain tensors out (no Python objects)."""
        return model

    def onnx_output_layout(self, model: nn.Module) -> str:
        """The exported graph's output in words, for a deployment reading its metadata."""
        return f"{self.family}: see docs/deploy.md"

    def onnx_postprocess(self, model: nn.Module, **options: Any) -> PostProcess:
        """Detections from the raw output of ``export_module(model)``'s graph, matching :meth:`predict`."""
        raise UnsupportedError(f"{self.family}: this model's exported graph has no post-processing to score it with")

    # --- fine-tuning as the stages call it ---------------------------------------------------
    def trainer_options(self, options: FinetuneOptions) -> dict[str, Any]:
        """``options`` as keywords of :meth:`finetune` (renamed by :attr:`finetune_names`)."""
        renamed: dict[str, Any] = {}
        for key, value in options.as_dict().items():
            name = self.finetune_names.get(key, key)
            if name is not None:
                renamed[name] = value
        return renamed

    def finetune_data(self, train: DetectionSet, val: DetectionSet, out_dir: Path) -> Any:
        """What :meth:`finetune` reads as ``data`` for these splits (default: the splits themselves)."""
        return {"train": train, "val": val}

    def finetune_splits(self, model: nn.Module, train: DetectionSet, val: DetectionSet, *, epochs: int,
                        out_dir: str | Path, options: FinetuneOptions | None = None) -> nn.Module:
        """Fine-tune on ``train`` (validated on ``val``) with the family's trainer; the best model.

        Data the trainer needs on disk is written under ``out_dir`` first; the trainer's run is
        ``out_dir/finetune``.
        """
        options = options or FinetuneOptions()
        if options.callbacks and not self.epoch_callbacks:
            raise UnsupportedError(f"{self.family}: its trainer reports no per-epoch validation to call back with")
        out_dir = Path(out_dir)
        data = self.finetune_data(train, val, out_dir)
        return self.finetune(model, data, epochs=epochs, out_dir=out_dir / "finetune", **self.trainer_options(options))

    # --- distillation, pruning hooks ----------------------------------------------------------
    def check_teacher(self, teacher: nn.Module, student: nn.Module) -> None:
        """Refuse a teacher that cannot distil into ``student`` (other family, classes, feature levels)."""
        raise UnsupportedError(f"{self.family}: distillation is not supported for this family")

    def dependency_graph_options(self, model: nn.Module) -> dict:
        """Keyword arguments for ``DependencyGraph.build_dependency`` (e.g. a ``forward_fn``)."""
        return {}

    def roi_pool_points(self, model: nn.Module) -> list[RoiPoint]:
        """Where a two-stage detector pools RoIs (none for a one-stage one)."""
        return []

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
                predictions.extend(
                    self.predict(model, batch, conf=conf, iou=iou, max_det=max_det, multi_label=multi_label)
                )
        return predictions


# --- the registry ---------------------------------------------------------------------------
# family -> "module:class"; imported on demand so YOLO users never import R-CNN code and back.
# A new family is one package under detprune/adapters/ and one line here.
FAMILIES: dict[str, str | type[DetectorAdapter]] = {
    "yolo": "detprune.adapters.yolo:YoloAdapter",
    "rcnn": "detprune.adapters.rcnn:RcnnAdapter",
}


def register_family(name: str, adapter: str | type[DetectorAdapter]) -> None:
    """Add a family from outside detprune: a ``"module:Class"`` path or the class itself."""
    FAMILIES[name] = adapter


def families() -> list[str]:
    """The registered family names, in look-up order."""
    return list(FAMILIES)


def adapter_class(family: str) -> type[DetectorAdapter]:
    try:
        target = FAMILIES[family]
    except KeyError:
        raise UnsupportedError(f"unknown detector family {family!r}; known: {', '.join(FAMILIES)}") from None
    if isinstance(target, str):
        module, name = target.split(":")
        return getattr(importlib.import_module(module), name)
    return target


def _classes():
    for family in FAMILIES:
        try:
            yield adapter_class(family)
        except ImportError:
            continue


def get_adapter(spec: str | Path) -> DetectorAdapter:
    """The adapter for a weights file, architecture yaml or name."""
    for cls in _classes():
        if cls.handles(spec):
            return cls()
    _refuse_damaged(Path(spec))
    raise UnsupportedError(
        f"{spec}: no adapter knows this model; expected an ultralytics YOLO .pt/.yaml "
        "(yolov5*u, yolov8*, yolo11*, yolo26*) or a torchvision fasterrcnn_* name"
    )


def resuming_adapter() -> DetectorAdapter:
    """The adapter whose training runs can be resumed from their folder (``finetune --resume``)."""
    for cls in _classes():
        if cls.resumes_runs:
            return cls()
    raise UnsupportedError("no installed detector family resumes training runs")


def adapter_for_model(model: nn.Module) -> DetectorAdapter | None:
    """The adapter of a built model's family; None when no family owns it."""
    for cls in _classes():
        if cls.owns(model):
            return cls()
    return None


def _refuse_damaged(path: Path) -> None:
    """A model file no adapter claims because it cannot be read: say that, not "unknown model"."""
    from detprune.utils.checkpoints import describe_damage

    if path.suffix.lower() in (".pt", ".pth", ".ckpt") and path.is_file():
        damage = describe_damage(path)
        if damage is not None:
            raise BadInputError(f"{path}: cannot read the model file: {damage}")
