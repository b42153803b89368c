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
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from detprune.adapters.base import DetectorAdapter, FinetuneOptions, PostProcess
from detprune.adapters.yolo import objective
from detprune.adapters.yolo.arch_yaml import check_architecture
from detprune.adapters.yolo.checkpoint import (  # noqa: F401  (re-exported)
    WeightsReport,
    _is_ultralytics_checkpoint,
    load_state_dict_file,
    read_checkpoint,
)
from detprune.adapters.yolo.rewrites import SPLIT_TYPES, reset_head_caches, split_blocks
from detprune.data.batch import Batch, as_hw
from detprune.data.types import DetectionSet, Detections
from detprune.defaults import EVAL_CONF, EVAL_MAX_DET, EVAL_MULTI_LABEL, YOLO_NMS_IOU
from detprune.errors import BadInputError, UnsupportedError
from detprune.utils.checkpoints import require_weights
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
    # FinetuneOptions -> finetune_yolo's names. val=False: validate after the last epoch only,
    # so the last epoch is returned, not one picked on val
    finetune_names = {"lr": "lr0", "val_every_epoch": "val", "label": "progress_label"}
    epoch_callbacks = True  # ultralytics' trainer events (on_fit_epoch_end: the validation curve)
    safe_load_modules = ("detprune.adapters.yolo.rewrites", "detprune.adapters.yolo_rewrites")

    @classmethod
    def owns(cls, model: nn.Module) -> bool:
        from ultralytics.nn.tasks import DetectionModel

        return isinstance(model, DetectionModel)

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
            if weights is None:
                require_weights(spec, "a trained .pt as the model, or --weights FILE (a state dict)")
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
            raise BadInputError(
                f"{spec}: cannot read the architecture yaml ({type(exc).__name__}: {exc})".replace("\n", " ")
            ) from None
        if not isinstance(cfg, dict) or "backbone" not in cfg or "head" not in cfg:
            raise BadInputError(f"{spec}: not an ultralytics architecture yaml (needs 'backbone' and 'head')")
        _check_yaml_head(cfg, spec)
        check_architecture(cfg, spec)  # before ultralytics evals anything from the file
        nc = len(class_names) if class_names is not None else None
        if nc is not None and nc < 1:
            raise BadInputError(f"{spec}: class_names is empty; a detector needs at least one class")
        try:
            model = DetectionModel(cfg, nc=nc, verbose=False)
        except Exception as exc:
            raise UnsupportedError(
                f"{spec}: ultralytics cannot build this architecture ({type(exc).__name__}: {exc})".replace("\n", " ")
            ) from None
        check_supported(model, spec)
        if class_names is not None:
            model.names = {i: str(name) for i, name in enumerate(class_names)}
        model.args = objective.default_hyperparameters()
        return model

    def _read_pt(self, path: Path) -> nn.Module:
        if not path.is_file():
            raise BadInputError(
                f"{path}: model file not found (weights are never downloaded; give a local .pt or an architecture "
                f"yaml/name)"
            )
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
        """See :func:`detprune.adapters.yolo.objective.detection_utility`."""
        return objective.detection_utility(model, batch, utility=utility)

    def predict(
        self,
        model: nn.Module,
        batch: Batch,
        *,
        conf: float = EVAL_CONF,
        iou: float | None = None,
        max_det: int = EVAL_MAX_DET,
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
        from detprune.adapters.yolo.trainer import finetune_yolo

        return finetune_yolo(model, data, epochs=epochs, out_dir=out_dir, **options).model

    run_name = "train"  # ultralytics' run folder inside out_dir (the trainer's RUN_NAME)
    resumes_runs = True

    def train_run(self, model: nn.Module | None, data: Any, *, epochs: int | None, out_dir: str | Path,
                  **options: Any):
        """ultralytics' trainer on the module itself (:func:`finetune_yolo`); its FinetuneResult."""
        from detprune.adapters.yolo.trainer import finetune_yolo

        return finetune_yolo(model, data, epochs=epochs, out_dir=out_dir, **options)

    def data_class_names(self, data: str | Path) -> list[str]:
        from detprune.adapters.yolo.datasets import check_data_yaml

        names = check_data_yaml(data).get("names")
        if isinstance(names, dict):
            return [str(names[k]) for k in sorted(names)]
        if names is None:
            raise BadInputError(f"{data}: gives only 'nc'; training a baseline needs the class 'names'")
        return [str(n) for n in names]

    def trainer_options(self, options: FinetuneOptions) -> dict[str, Any]:
        renamed = super().trainer_options(options)
        renamed.setdefault("exist_ok", True)
        if renamed.get("imgsz") is not None:  # ultralytics trains at one size: the long side of H,W
            from detprune.data.batch import train_side

            renamed["imgsz"] = train_side(renamed["imgsz"])
        return renamed

    def finetune_data(self, train: DetectionSet, val: DetectionSet, out_dir: Path) -> Path:
        """Ultralytics reads a YOLO dataset: written from the splits into ``out_dir/dataset``."""
        from detprune.data.convert import write_yolo_dataset

        return write_yolo_dataset(train, val, Path(out_dir) / "dataset")

    def check_teacher(self, teacher: nn.Module, student: nn.Module) -> None:
        from detprune.adapters.yolo.distill import check_teacher

        check_teacher(teacher, student)

    def onnx_output_layout(self, model: nn.Module) -> str:
        nc = len(self.class_names(model))
        if getattr(model.model[-1], "end2end", False):
            return "(batch, max_det, 6): x1, y1, x2, y2 in input pixels, score, class index; NMS-free"
        return (f"(batch, 4 + nc, anchors): per anchor a box as centre x, centre y, width, height in input pixels, "
                f"then {nc} class scores in [0, 1]; no NMS (apply it, e.g. IoU 0.7); boxes map to the frame by "
                "undoing the letterbox")

    def onnx_postprocess(self, model: nn.Module, **options: Any) -> PostProcess:
        from detprune.adapters.yolo.exported import yolo_head_info, yolo_postprocess

        return yolo_postprocess(**yolo_head_info(model), **options)

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
        raise UnsupportedError(
            f"{spec}: unsupported module types {names[-1]}; detprune handles detection models (Detect head) only"
        )
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
