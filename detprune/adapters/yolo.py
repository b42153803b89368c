"""The ultralytics YOLO family (YOLOv5u, YOLOv8, YOLO11, YOLO26 detection models).

Models are ultralytics ``DetectionModel`` objects, built from an architecture yaml or read
from an ultralytics checkpoint; weights are never downloaded. Loss and assignment come from
ultralytics itself (``v8DetectionLoss`` / ``E2ELoss`` and their ``TaskAlignedAssigner``), so a
pruned model is judged by the objective it is trained with.
"""

from __future__ import annotations

import copy
import logging
import re
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from detprune.adapters.base import DetectorAdapter
from detprune.adapters import yolo_objective as objective
from detprune.adapters.yolo_rewrites import SPLIT_TYPES, reset_head_caches, split_blocks
from detprune.data.batch import Batch, as_hw
from detprune.data.types import Detections
from detprune.defaults import EVAL_CONF, EVAL_MAX_DET, EVAL_MULTI_LABEL, YOLO_NMS_IOU
from detprune.errors import BadInputError, UnsupportedError
from detprune.utils.seeding import INIT_SEED, seeded_init

LOGGER = logging.getLogger(__name__)

# A bare name or yaml stem of an ultralytics YOLO architecture, e.g. yolov8n, yolo11s, yolov5nu, yolo26n-p2,
# yolov8n-seg (claimed so that load() can say which of its modules are unsupported)
_NAME = re.compile(r"^yolo(v\d+|\d+)[nslmxtbce]?u?(-[a-z0-9-]+)?$", re.IGNORECASE)
_YAML_SUFFIXES = (".yaml", ".yml")


def _module_names() -> set[str]:
    """The module types this adapter knows how to rewrite, protect, score and save."""
    return {
        # containers and plain layers
        "DetectionModel", "Sequential", "ModuleList", "Conv2d", "BatchNorm2d", "SiLU", "ReLU", "Identity",
        "MaxPool2d", "Upsample", "Concat",
        # ultralytics blocks of YOLOv5u / v8 / 11 / 26
        "Conv", "DWConv", "C3", "C2f", "C3k2", "C3k", "Bottleneck", "SPPF", "SPP", "C2PSA", "PSABlock", "Attention",
        "C2fPSA", "PSA", "Detect", "DFL",
        # the exact rewrites of yolo_rewrites
        *(cls.__name__ for cls in SPLIT_TYPES),
    }


class YoloAdapter(DetectorAdapter):
    """Ultralytics YOLO detection models (anchor-free Detect head, with or without one-to-one head)."""

    family = "yolo"
    nms_iou = YOLO_NMS_IOU  # ultralytics' val and predict default (see detprune.defaults)

    # --- loading -------------------------------------------------------------------
    @classmethod
    def handles(cls, spec: str | Path) -> bool:
        path = Path(spec)
        suffix = path.suffix.lower()
        if suffix == ".pt":
            if not path.is_file():
                return "yolo" in path.name.lower()  # load() then says the file is missing
            return _is_ultralytics_checkpoint(path)
        if suffix in _YAML_SUFFIXES:
            if path.is_file():
                return _is_yolo_yaml(path)
            return bool(_NAME.match(path.stem))
        return not path.suffix and bool(_NAME.match(path.name))

    def load(
        self,
        spec: str | Path,
        *,
        weights: str | Path | None = None,
        class_names: Sequence[str] | None = None,
        init_seed: int = INIT_SEED,
    ) -> nn.Module:
        path = Path(spec)
        if path.suffix.lower() == ".pt":
            model = self._read_pt(path)
            if class_names is not None:
                with seeded_init(init_seed):
                    objective.rehead(model, list(class_names))
        else:
            with seeded_init(init_seed):
                model = self._build_yaml(spec, class_names)
        if weights is not None:
            load_state_dict_file(model, weights)
        return model

    def _build_yaml(self, spec: str | Path, class_names: Sequence[str] | None) -> nn.Module:
        from ultralytics.nn.tasks import DetectionModel, yaml_model_load

        path = Path(spec)
        if not path.suffix:
            path = path.with_suffix(".yaml")
        if not path.is_file() and not _NAME.match(path.stem):
            raise BadInputError(f"{spec}: architecture yaml not found")
        try:
            cfg = yaml_model_load(path)
        except Exception as exc:  # ultralytics raises FileNotFoundError, yaml errors, ...
            raise BadInputError(f"{spec}: cannot read the architecture yaml ({type(exc).__name__}: {exc})".replace("\n", " ")) from None
        if not isinstance(cfg, dict) or "backbone" not in cfg or "head" not in cfg:
            raise BadInputError(f"{spec}: not an ultralytics architecture yaml (needs 'backbone' and 'head')")
        _check_yaml_head(cfg, spec)
        nc = len(class_names) if class_names is not None else None
        if nc is not None and nc < 1:
            raise BadInputError(f"{spec}: class_names is empty; a detector needs at least one class")
        try:
            model = DetectionModel(cfg, nc=nc, verbose=False)
        except Exception as exc:
            raise UnsupportedError(f"{spec}: ultralytics cannot build this architecture ({type(exc).__name__}: {exc})".replace("\n", " ")) from None
        check_supported(model, spec)
        if class_names is not None:
            model.names = {i: str(name) for i, name in enumerate(class_names)}
        model.args = objective.default_hyperparameters()
        return model

    def _read_pt(self, path: Path) -> nn.Module:
        if not path.is_file():
            raise BadInputError(f"{path}: model file not found (weights are never downloaded; give a local .pt or an architecture yaml/name)")
        model, _ = read_checkpoint(path)
        check_supported(model, path)
        return model

    def class_names(self, model: nn.Module) -> list[str]:
        names = getattr(model, "names", None) or {}
        nc = _head(model).nc
        if isinstance(names, dict):
            return [str(names.get(i, i)) for i in range(nc)]
        return [str(n) for n in list(names)[:nc]]

    # --- pruning ---------------------------------------------------------------------
    def prepare_for_pruning(self, model: nn.Module) -> nn.Module:
        """Split the ``cv1`` of C2f / C3k2 / C2PSA / PSA into two convolutions (exact; idempotent)."""
        check_supported(model, type(model).__name__)
        count = split_blocks(model)
        if count:
            LOGGER.info("split cv1 of %d blocks into two convolutions", count)
        reset_head_caches(model)
        return model

    def example_inputs(self, model: nn.Module, imgsz: int | Sequence[int] = 320, batch_size: int = 1) -> torch.Tensor:
        """A fixed pseudo-random image batch in [0, 1], sides rounded up to the model's largest stride."""
        stride = int(max(_head(model).stride.max().item(), 32)) if _head(model).stride.numel() else 32
        h, w = (-(-side // stride) * stride for side in as_hw(imgsz))
        generator = torch.Generator().manual_seed(0)
        param = next(model.parameters())
        return torch.rand(batch_size, 3, h, w, generator=generator).to(device=param.device, dtype=param.dtype)

    def protected_layers(self, model: nn.Module) -> list[nn.Module]:
        """The Detect predictors (box and class, one-to-many and one-to-one), DFL, attention internals.

        The predictors' widths are the output format (4 x reg_max box bins, nc classes); DFL is a
        fixed projection; Attention reshapes qkv into heads of a fixed size, so its qkv / proj / pe
        convolutions keep their channels.
        """
        from ultralytics.nn.modules.block import DFL, Attention

        protected: list[nn.Module] = []
        head = _head(model)
        for name in ("cv2", "cv3", "one2one_cv2", "one2one_cv3"):
            branches = getattr(head, name, None)
            if branches is not None:
                protected.extend(branch[-1] for branch in branches)
        for module in model.modules():
            if isinstance(module, DFL):
                protected.append(module)
            elif isinstance(module, Attention):
                protected.extend((module.qkv, module.proj, module.pe))
        return protected

    def activation_points(self, model: nn.Module) -> dict[str, nn.Module]:
        """``{"model.2.cv1_a.conv": <the Conv block>, ...}``: every prunable conv of a Conv block.

        An ultralytics ``Conv`` computes act(bn(conv(x))), so its own output is the activation
        of its ``.conv``, one channel per output channel.
        """
        from ultralytics.nn.modules.conv import Conv

        protected = {id(m) for layer in self.protected_layers(model) for m in layer.modules()}
        points: dict[str, nn.Module] = {}
        for name, module in model.named_modules():
            if isinstance(module, Conv) and isinstance(getattr(module, "conv", None), nn.Conv2d):
                if id(module.conv) not in protected:
                    points[f"{name}.conv"] = module
        return points

    # --- objective -------------------------------------------------------------------
    def detection_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """ultralytics' own training loss (box + cls + dfl/l1, times batch size) for ``batch``."""
        return objective.detection_loss(model, batch)

    def weighted_detection_loss(self, model: nn.Module, batch: Batch, box_weights: list[torch.Tensor]) -> torch.Tensor:
        """The loss with each GT box's terms scaled by its weight (class priorities of the criteria)."""
        return objective.weighted_detection_loss(model, batch, box_weights)

    def detection_utility(self, model: nn.Module, batch: Batch, *, utility: str = "score") -> torch.Tensor:
        """See :func:`detprune.adapters.yolo_objective.detection_utility`."""
        return objective.detection_utility(model, batch, utility=utility)

    def predict(
        self, model: nn.Module, batch: Batch, *, conf: float = EVAL_CONF, iou: float | None = None, max_det: int = EVAL_MAX_DET,
        multi_label: bool = EVAL_MULTI_LABEL,
    ) -> list[Detections]:
        """ultralytics' NMS; ``iou=None`` is :attr:`nms_iou`, 0.7 as ultralytics' val and predict use.
        ``multi_label``: one detection per class above ``conf`` for a box, as ultralytics' val."""
        return objective.predict(model, batch, conf=conf, iou=self.nms_iou if iou is None else iou, max_det=max_det,
                                 multi_label=multi_label)

    def input_stride(self, model: nn.Module) -> int:
        """The largest head stride (32 for P3-P5 models, 64 for P6), at least 32."""
        stride = _head(model).stride
        return int(max(stride.max().item(), 32)) if stride.numel() else 32

    # --- training, files ---------------------------------------------------------------
    def finetune(self, model: nn.Module, data: Any, *, epochs: int, out_dir: str | Path, **options: Any) -> nn.Module:
        """Fine-tune with ultralytics' own trainer on the pruned module (never rebuilt from yaml).

        ``data`` is an ultralytics dataset yaml; ``options`` are :func:`finetune_yolo`'s.
        """
        from detprune.train.yolo_trainer import finetune_yolo

        return finetune_yolo(model, data, epochs=epochs, out_dir=out_dir, **options).model

    def export_module(self, model: nn.Module) -> nn.Module:
        """A copy of the model in eval mode whose Detect returns the prediction tensor alone.

        Output: (B, 4 + nc, anchors) with xywh boxes in input pixels, or (B, max_det, 6) rows of
        x1, y1, x2, y2, score, class for a one-to-one (``end2end``) head.
        """
        exported = _clean_copy(model).eval()
        for module in exported.modules():
            if hasattr(module, "export") and isinstance(getattr(type(module), "export", None), bool):
                module.export = True
        for p in exported.parameters():
            p.requires_grad_(False)
        return exported

    def save(self, model: nn.Module, path: str | Path, meta: dict | None = None) -> Path:
        """An ultralytics checkpoint: ``ultralytics.YOLO(path)`` loads it where detprune is installed."""
        from ultralytics import __version__
        from ultralytics.utils import DEFAULT_CFG_KEYS

        from detprune.utils.atomic import atomic_path

        saved = _clean_copy(model).float().eval()
        args = getattr(model, "args", None)
        train_args = dict(vars(args)) if hasattr(args, "__dict__") else dict(args or {})
        train_args.setdefault("task", "detect")
        # only the trainer's own settings: ultralytics rejects unknown keys when it resumes
        train_args = {k: (str(v) if isinstance(v, Path) else v) for k, v in train_args.items() if k in DEFAULT_CFG_KEYS}
        saved.args = train_args
        ckpt = {
            "date": datetime.now(timezone.utc).isoformat(),
            "version": __version__,
            "epoch": -1,
            "best_fitness": None,
            "model": saved,
            "ema": None,
            "updates": None,
            "optimizer": None,
            "train_args": train_args,
            "detprune": dict(meta or {}),
        }
        target = Path(path)
        with atomic_path(target, suffix=".pt") as tmp:
            torch.save(ckpt, tmp)
        return target

    def load_checkpoint(self, path: str | Path) -> nn.Module:
        model = self._read_pt(Path(path))
        model.args = objective.default_hyperparameters(getattr(model, "args", None))
        return model


# --- helpers -----------------------------------------------------------------------------


def read_checkpoint(path: str | Path) -> tuple[nn.Module, dict]:
    """(model in FP32 eval mode, checkpoint dict) of an ultralytics checkpoint, read without running
    code stored in it (see :mod:`detprune.utils.checkpoints`); what ultralytics' own loader sets up
    on the model (its args, ``pt_path``, task, a stride) is set up here too."""
    from ultralytics.nn.tasks import guess_model_task
    from ultralytics.utils import DEFAULT_CFG_DICT

    from detprune.utils.checkpoints import load_torch_file

    path = Path(path)
    ckpt = load_torch_file(path, what="checkpoint")
    if isinstance(ckpt, nn.Module):  # torch.save(model) rather than a checkpoint dict
        ckpt = {"model": ckpt}
    model = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else None
    if not isinstance(model, nn.Module):
        raise BadInputError(f"{path}: not an ultralytics checkpoint (no model module under 'model' or 'ema')")
    model = model.float().eval()
    model.args = {**DEFAULT_CFG_DICT, **(ckpt.get("train_args") or {})}
    model.pt_path = str(path)
    if not hasattr(model, "task"):
        model.task = guess_model_task(model)
    if not hasattr(model, "stride"):
        model.stride = torch.tensor([32.0])
    return model, ckpt


def _head(model: nn.Module) -> nn.Module:
    from ultralytics.nn.modules.head import Detect

    head = model.model[-1] if hasattr(model, "model") else None
    if not isinstance(head, Detect):
        raise UnsupportedError(f"{type(model).__name__}: not an ultralytics detection model (last layer is not Detect)")
    return head


def check_supported(model: nn.Module, source: str | Path) -> None:
    """Refuse architectures with modules this adapter has no rewrite / protection rules for."""
    known = _module_names()
    unknown = sorted({type(m).__name__ for m in model.modules()} - known)
    if unknown:
        raise UnsupportedError(
            f"{source}: unsupported module types {', '.join(unknown)}; "
            "detprune handles YOLOv5u / YOLOv8 / YOLO11 / YOLO26 detection models"
        )
    _head(model)


def _check_yaml_head(cfg: dict, spec: str | Path) -> None:
    """Refuse unknown blocks and task heads other than Detect before building anything."""
    layers = list(cfg.get("backbone") or []) + list(cfg.get("head") or [])
    names = [str(layer[2]).split(".")[-1] for layer in layers if isinstance(layer, (list, tuple)) and len(layer) > 2]
    if names and names[-1] != "Detect":
        raise UnsupportedError(f"{spec}: unsupported module types {names[-1]}; detprune handles detection models (Detect head) only")
    unknown = sorted(set(names) - _module_names())
    if unknown:
        raise UnsupportedError(
            f"{spec}: unsupported module types {', '.join(unknown)}; "
            "detprune handles YOLOv5u / YOLOv8 / YOLO11 / YOLO26 detection models"
        )


def _is_yolo_yaml(path: Path) -> bool:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return False
    return "backbone:" in text and "head:" in text


def _is_ultralytics_checkpoint(path: Path) -> bool:
    """A torch zip whose pickle references ultralytics classes (cheap: no unpickling)."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
            return any(b"ultralytics" in archive.read(n) for n in pickles)
    except (OSError, zipfile.BadZipFile):
        return "yolo" in path.name.lower()  # unreadable: claim it when named so, load() reports why


def _clean_copy(model: nn.Module) -> nn.Module:
    """A deep copy without hooks or cached criterion, so it pickles and traces cleanly."""
    criterion = getattr(model, "criterion", None)
    if criterion is not None:
        model.criterion = None
    try:
        clone = copy.deepcopy(model)
    finally:
        if criterion is not None:
            model.criterion = criterion
    for module in clone.modules():
        for hooks in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_forward_hooks_with_kwargs"):
            getattr(module, hooks, {}).clear()
    reset_head_caches(clone)
    return clone


@dataclass
class WeightsReport:
    """How a state-dict file met a model: tensor names by outcome."""

    matched: list[str]
    missing: list[str]  # model entries the file lacks (BatchNorm batch counters excluded)
    shape_mismatch: list[str]
    unexpected: list[str]  # file entries the model lacks
    counters_missing: int = 0  # BatchNorm num_batches_tracked: bookkeeping, not weights

    def summary(self) -> str:
        by_layer: dict[str, int] = {}
        for name in self.missing:
            layer = ".".join(name.split(".")[:2])
            by_layer[layer] = by_layer.get(layer, 0) + 1
        missing = ", ".join(f"{n} in {layer}" for layer, n in by_layer.items()) or "none"
        return (
            f"matched {len(self.matched)} tensors; model tensors not in the file: {missing}; "
            f"{len(self.shape_mismatch)} shape mismatches; {len(self.unexpected)} file tensors not in the model; "
            f"{self.counters_missing} BatchNorm batch counters left as they were"
        )


def load_state_dict_file(model: nn.Module, weights: str | Path) -> WeightsReport:
    """Copy the tensors of a state-dict file whose names and shapes match; say how many matched.

    Accepts ``{"state_dict": ...}``, an ultralytics checkpoint (``{"model": module}``) or a bare
    state dict, read without running code stored in it. Every model tensor must be matched,
    except for a file that covers the whole backbone and neck (the Detect head then keeps its
    fresh initialisation, e.g. for a new class set); anything less is refused unless
    :func:`~detprune.utils.checkpoints.load_policy` has ``partial_weights`` (``--partial-weights``).
    """
    from detprune.utils.checkpoints import current_policy, load_torch_file, notice

    path = Path(weights)
    if not path.is_file():
        raise BadInputError(f"{path}: weights file not found")
    state = _state_dict_of(load_torch_file(path, what="weights"))
    if state is None:
        raise BadInputError(f"{path}: no state dict inside (expected a 'state_dict' or 'model' entry, or tensors)")
    own = model.state_dict()
    matched = {k: v for k, v in state.items() if k in own and torch.is_tensor(v) and v.shape == own[k].shape}
    absent = [k for k in own if k not in state]
    report = WeightsReport(
        matched=list(matched),
        missing=[k for k in absent if not k.endswith("num_batches_tracked")],
        shape_mismatch=[k for k, v in state.items() if k in own and torch.is_tensor(v) and v.shape != own[k].shape],
        unexpected=[k for k in state if k not in own],
        counters_missing=sum(k.endswith("num_batches_tracked") for k in absent),
    )
    if not matched:
        raise BadInputError(f"{path}: none of its {len(state)} tensors match this architecture's names and shapes")
    wanted = [k for k in own if not k.endswith("num_batches_tracked")]  # counters are bookkeeping, not weights
    loaded = [k for k in wanted if k in matched]
    head = f"model.{len(model.model) - 1}." if hasattr(model, "model") else None
    body = [k for k in wanted if head is None or not k.startswith(head)]
    counts = f"{len(loaded)} of {len(wanted)} model tensors"
    if len(loaded) == len(wanted):
        message = f"weights {path}: loaded {counts}"
    elif head is not None and all(k in matched for k in body):
        new = len(wanted) - len(loaded)
        message = (f"weights {path}: backbone and neck loaded ({len(body)} of {len(body)} tensors), "
                   f"head new ({new} of {len(wanted) - len(body)} head tensors left as initialised)")
    elif current_policy().partial_weights:
        message = f"weights {path}: loaded {counts} (--partial-weights); the other {len(wanted) - len(loaded)} stay as initialised"
    else:
        raise BadInputError(
            f"{path}: only {counts} match by name and shape ({report.summary()}); "
            "the rest would stay randomly initialised: pass --partial-weights to load them anyway"
        )
    model.load_state_dict(matched, strict=False)
    notice(message)
    LOGGER.info("%s: %s", path, report.summary())
    return report


def _state_dict_of(data: Any) -> dict[str, torch.Tensor] | None:
    if isinstance(data, nn.Module):
        return data.float().state_dict()
    if not isinstance(data, dict):
        return None
    for key in ("state_dict", "ema", "model"):
        value = data.get(key)
        if isinstance(value, nn.Module):
            return value.float().state_dict()
        if isinstance(value, dict) and value and all(torch.is_tensor(v) for v in value.values()):
            return value
    if data and all(torch.is_tensor(v) for v in data.values()):
        return data
    return None
