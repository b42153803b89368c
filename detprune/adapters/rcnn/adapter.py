"""torchvision Faster R-CNN with an FPN (ResNet-50 v1 / v2, MobileNetV3-Large, MobileNetV3-Large 320).

Faster R-CNN: Ren, He, Girshick and Sun, "Faster R-CNN: Towards Real-Time Object Detection with
Region Proposal Networks", NeurIPS 2015; FPN: Lin et al., CVPR 2017. The models are
torchvision's own, built without downloading anything and filled from a local state dict.

Labels: detprune label ``k`` is torchvision label ``k + 1`` (0 is background), so a model for
``class_names`` has ``len(class_names) + 1`` outputs (see :mod:`detprune.adapters.rcnn.objective`).
Pruning traces the dense path of :mod:`detprune.adapters.rcnn.coupling`; the pruner must build
its dependency graph with :meth:`RcnnAdapter.dependency_graph_options`.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from detprune.adapters.rcnn import checkpoint as ckpt
from detprune.adapters.rcnn import coupling
from detprune.adapters.rcnn import objective
from detprune.adapters.base import DetectorAdapter
from detprune.adapters.rcnn.rewrites import freeze_batchnorm, unfreeze_batchnorm
from detprune.data.batch import Batch, as_hw
from detprune.data.types import Detections
from detprune.defaults import EVAL_CONF, EVAL_MAX_DET, EVAL_MULTI_LABEL
from detprune.errors import BadInputError, UnsupportedError
from detprune.utils.checkpoints import require_weights
from detprune.utils.seeding import INIT_SEED, seeded_init

LOGGER = logging.getLogger(__name__)

_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
_INFO = "detprune_info"  # model attribute: {"arch": ..., "class_names": [...]}
STRIDE = 32  # the coarsest FPN level of every supported backbone


def _set_info(model: nn.Module, arch: str, class_names: Sequence[str]) -> None:
    setattr(model, _INFO, {"arch": arch, "class_names": [str(n) for n in class_names]})


class RcnnAdapter(DetectorAdapter):
    """torchvision ``fasterrcnn_*_fpn`` models and the checkpoints :meth:`save` writes."""

    family = "rcnn"
    finetune_names = {"batch": "batch_size", "label": None}  # label: YOLO's epoch bar only

    @classmethod
    def owns(cls, model: nn.Module) -> bool:
        from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

        return isinstance(model, GeneralizedRCNN)

    def check_teacher(self, teacher: nn.Module, student: nn.Module) -> None:
        from detprune.adapters.rcnn.distill import check_teacher

        check_teacher(teacher, student)

    # --- loading -------------------------------------------------------------------
    @classmethod
    def handles(cls, spec: str | Path) -> bool:
        path = Path(spec)
        if not path.suffix:
            return ckpt.architecture_of_name(path.name) is not None
        if path.suffix.lower() not in _CHECKPOINT_SUFFIXES:
            return False
        if path.is_file():
            return ckpt.is_checkpoint_file(path) or ckpt.architecture_of_file(path) is not None
        return ckpt.architecture_of_file(path) is not None or "rcnn" in path.name.lower()  # load() says it is missing

    def load(
        self, spec: str | Path, *, weights: str | Path | None = None, class_names: Sequence[str] | None = None,
        init_seed: int = INIT_SEED,
    ) -> nn.Module:
        """An architecture name (with an optional state-dict file), a weights file named after its
        architecture, or a detprune checkpoint. ``class_names`` re-heads the box predictor."""
        if class_names is not None and len(class_names) < 1:
            raise BadInputError(f"{spec}: class_names is empty; a detector needs at least one class")
        path = Path(spec)
        if path.suffix and not path.is_file():
            raise BadInputError(
                f"{spec}: model file not found (weights are never downloaded; give a local file or an architecture "
                f"name)"
            )
        if path.suffix.lower() in _CHECKPOINT_SUFFIXES and ckpt.is_checkpoint_file(path):
            if weights is not None:
                raise BadInputError(f"{spec}: a detprune checkpoint carries its own weights; drop weights={weights}")
            model = self.load_checkpoint(path)
            if class_names is not None and list(class_names) != self.class_names(model):
                with seeded_init(init_seed):
                    rehead(model, class_names)
            return model
        arch = ckpt.architecture_of_name(path.name) if not path.suffix else ckpt.architecture_of_file(path)
        if arch is None:
            raise UnsupportedError(
                f"{spec}: not a torchvision Faster R-CNN; expected one of {', '.join(ckpt.ARCHITECTURES)}"
            )
        if path.suffix:
            if weights is not None:
                raise BadInputError(f"{spec}: give either a weights file as the model or weights=, not both")
            weights = path
        if weights is None:
            require_weights(spec, "--weights FILE.pth (a torchvision state dict)")
        state = ckpt.read_state_dict(weights) if weights is not None else None
        in_file = ckpt.num_classes_in(state) if state is not None else None
        num_classes = len(class_names) + 1 if class_names is not None else (in_file or 91)
        with seeded_init(init_seed):
            model = ckpt.build(arch, num_classes, pretrained_layout=state is not None)
        if state is not None:
            rehead_needed = in_file is not None and in_file != num_classes
            if rehead_needed:
                LOGGER.info(
                    "%s: %d classes in the file, %d asked for: the box predictor starts fresh",
                    weights,
                    in_file - 1,
                    num_classes - 1,
                )
            ckpt.load_weights(model, state, weights, rehead=rehead_needed)
        _set_info(model, arch, class_names if class_names is not None else ckpt.default_class_names(num_classes))
        return model.eval()

    def class_names(self, model: nn.Module) -> list[str]:
        num_classes = model.roi_heads.box_predictor.cls_score.out_features
        names = (getattr(model, _INFO, None) or {}).get("class_names")
        if names and len(names) == num_classes - 1:
            return list(names)
        return ckpt.default_class_names(num_classes)

    def architecture(self, model: nn.Module) -> str:
        """The torchvision builder name of ``model`` (recorded at load, else recognised by structure)."""
        recorded = (getattr(model, _INFO, None) or {}).get("arch")
        if recorded:
            return recorded
        body = model.backbone.body
        if hasattr(body, "layer4"):
            return (
                "fasterrcnn_resnet50_fpn"
                if type(model.roi_heads.box_head).__name__ == "TwoMLPHead"
                else "fasterrcnn_resnet50_fpn_v2"
            )
        if int(model.rpn._pre_nms_top_n["testing"]) == 150:
            return "fasterrcnn_mobilenet_v3_large_320_fpn"
        return "fasterrcnn_mobilenet_v3_large_fpn"

    # --- pruning ---------------------------------------------------------------------
    def prepare_for_pruning(self, model: nn.Module) -> nn.Module:
        """``FrozenBatchNorm2d`` -> equal ``BatchNorm2d`` in eval mode (in place; idempotent)."""
        coupling.fpn_width_layers(model)  # refuses models without an FPN
        count = unfreeze_batchnorm(model)
        if count:
            LOGGER.info("replaced %d FrozenBatchNorm2d layers by BatchNorm2d", count)
        return model

    def freeze_norms(self, model: nn.Module) -> nn.Module:
        """Freeze every ``BatchNorm2d`` again (for fine-tuning with small batches), in place."""
        freeze_batchnorm(model)
        return model

    def example_inputs(self, model: nn.Module, imgsz: int | Sequence[int] = 320, batch_size: int = 1) -> torch.Tensor:
        """A fixed pseudo-random image batch in [0, 1], sides rounded up to a multiple of 32."""
        h, w = (-(-side // STRIDE) * STRIDE for side in as_hw(imgsz))
        generator = torch.Generator().manual_seed(0)
        param = next(model.parameters())
        return torch.rand(batch_size, 3, h, w, generator=generator).to(device=param.device, dtype=param.dtype)

    def dependency_graph_options(self, model: nn.Module) -> dict:
        """Keyword arguments for ``DependencyGraph.build_dependency``: ``forward_fn`` runs the dense path."""
        return coupling.dependency_graph_options(model)

    def cost_module(self, model: nn.Module) -> nn.Module:
        """A module whose ``forward(images)`` is the dense path, for FLOPs counters (shares ``model``'s layers)."""
        return coupling.DenseRcnn(model)

    def coupling_notes(self, model: nn.Module) -> list[str]:
        return coupling.coupling_notes(model)

    def protected_layers(self, model: nn.Module) -> list[nn.Module]:
        """The RPN's objectness and box convs and the box predictor: their widths are anchors and classes."""
        predictor = model.roi_heads.box_predictor
        return [model.rpn.head.cls_logits, model.rpn.head.bbox_pred, predictor.cls_score, predictor.bbox_pred]

    def roi_pool_points(self, model: nn.Module) -> list[tuple[nn.Module, nn.Module, nn.Module]]:
        """(box head's first layer, the finest FPN level's output conv, the RoIAlign between them):
        where a latency table times RoIAlign, whose cost follows the FPN width x the proposals."""
        producers, _ = coupling.fpn_width_layers(model)
        reader = coupling.first_layer(model.roi_heads.box_head)
        return [(reader, producers[0], model.roi_heads.box_roi_pool)]

    def activation_points(self, model: nn.Module) -> dict[str, nn.Module]:
        """Every prunable conv / linear -> the module whose output is its activation.

        ``Conv2dNormActivation`` (MobileNetV3, FPN, RPN head, v2 box head) outputs act(norm(conv));
        in ResNet the ReLU module is shared within a block, so the point is the norm (a ReLU
        after it leaves ``|A * dU/dA|`` unchanged: both factors vanish where it clips);
        squeeze-excitation: ``fc1`` -> its ReLU, ``fc2`` -> its hard sigmoid; ``fc6`` / ``fc7``
        apply a functional ReLU, so the point is the linear layer itself.
        """
        protected = {id(m) for m in self.protected_layers(model)}
        modules = dict(model.named_modules())
        points: dict[str, nn.Module] = {}
        for name, module in modules.items():
            if isinstance(module, (nn.Conv2d, nn.Linear)) and id(module) not in protected:
                points[name] = _activation_of(name, module, modules)
        return points

    # --- objective -------------------------------------------------------------------
    def detection_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return objective.detection_loss(model, batch)

    def detection_utility(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return objective.detection_utility(model, batch)

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
        """Detections of the second stage: ``conf``, ``iou`` and ``max_det`` set the box head's
        ``score_thresh``, per-class ``nms_thresh`` and ``detections_per_img`` for the call;
        ``iou=None`` keeps the model's own (torchvision builds 0.5). The region proposal
        network's NMS (IoU 0.7, its pre/post-NMS top-n) is part of the detector and stays as built.
        ``multi_label`` changes nothing: the box head already keeps every class above ``conf``
        for a proposal (per-class boxes, per-class NMS)."""
        iou = float(model.roi_heads.nms_thresh) if iou is None else iou
        return objective.predict(model, batch, conf=conf, iou=iou, max_det=max_det)

    # --- training, files ---------------------------------------------------------------
    def finetune(self, model: nn.Module, data: Any, *, epochs: int, out_dir: str | Path, **options: Any) -> nn.Module:
        """SGD fine-tuning keeping the pruned widths; see :func:`detprune.adapters.rcnn.trainer.finetune`."""
        from detprune.adapters.rcnn.trainer import finetune

        return finetune(self, model, data, epochs=epochs, out_dir=out_dir, **options)

    def default_imgsz(self) -> tuple[int, int]:
        return (384, 1248)  # a KITTI frame (375 x 1242) at its own scale, sides a multiple of 32

    def export_module(self, model: nn.Module) -> nn.Module:
        """The whole detector for one (1, 3, H, W) image in [0, 1] at a fixed size: boxes (N, 4) in
        input pixels, scores (N,), labels (N,) 0-based. Exports with torch.onnx's TorchScript-based
        exporter (``dynamo=False``), opset 17."""
        exported = ExportedFasterRCNN(_clean_copy(model))
        for p in exported.parameters():
            p.requires_grad_(False)
        return exported.eval()

    def save(self, model: nn.Module, path: str | Path, meta: dict | None = None) -> Path:
        """One ``torch.save`` file (atomic) that :meth:`load_checkpoint` rebuilds, pruned widths included."""
        from detprune.utils.atomic import atomic_path

        data = ckpt.checkpoint_dict(model, self.architecture(model), self.class_names(model), meta)
        target = Path(path)
        with atomic_path(target) as tmp:
            torch.save(data, tmp)
        return target

    def load_checkpoint(self, path: str | Path) -> nn.Module:
        model, info = ckpt.model_from_checkpoint(path)
        _set_info(model, info["arch"], info["class_names"])
        return model


class ExportedFasterRCNN(nn.Module):
    """Faster R-CNN with tensors in and out: one image, no resize, 0-based labels."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if images.dim() != 4 or images.shape[0] != 1:
            raise UnsupportedError(
                f"the exported detector takes one image, shape (1, 3, H, W); got {tuple(images.shape)}"
            )
        height, width = int(images.shape[-2]), int(images.shape[-1])  # fixed at export: the graph keeps this size
        self.model.transform.min_size = (min(height, width),)
        self.model.transform.max_size = max(height, width)
        out = self.model([images[0]])[0]
        return out["boxes"], out["scores"], out["labels"] - 1


def rehead(model: nn.Module, class_names: Sequence[str]) -> None:
    """A fresh box predictor for ``class_names`` (+ background), keeping the box head's width."""
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

    old = model.roi_heads.box_predictor
    new = FastRCNNPredictor(old.cls_score.in_features, len(class_names) + 1)
    model.roi_heads.box_predictor = new.to(device=old.cls_score.weight.device, dtype=old.cls_score.weight.dtype)
    info = getattr(model, _INFO, None) or {}
    _set_info(model, info.get("arch") or RcnnAdapter().architecture(model), class_names)


def _activation_of(name: str, layer: nn.Module, modules: dict[str, nn.Module]) -> nn.Module:
    from torchvision.ops.misc import Conv2dNormActivation, SqueezeExcitation

    parent_name, _, child = name.rpartition(".")
    parent = modules.get(parent_name)
    if isinstance(parent, Conv2dNormActivation) and child == "0":
        return parent
    if isinstance(parent, SqueezeExcitation):
        return {"fc1": parent.activation, "fc2": parent.scale_activation}[child]
    if (
        child.startswith("conv")
        and child[4:].isdigit()
        and isinstance(getattr(parent, f"bn{child[4:]}", None), nn.Module)
    ):
        return getattr(parent, f"bn{child[4:]}")  # ResNet: conv1 -> bn1 (stem and bottlenecks)
    if child == "0" and type(parent).__name__ == "Sequential" and parent_name.endswith("downsample"):
        return parent  # ResNet downsample: conv, norm
    if isinstance(parent, nn.Sequential) and child.isdigit():
        following = parent[int(child) + 1] if int(child) + 1 < len(parent) else None
        if isinstance(following, nn.ReLU):
            return following  # v2 box head: Linear, ReLU
    return layer


def _clean_copy(model: nn.Module) -> nn.Module:
    """A deep copy without hooks, in eval mode."""
    clone = copy.deepcopy(model)
    for module in clone.modules():
        for hooks in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_forward_hooks_with_kwargs"):
            getattr(module, hooks, {}).clear()
    return clone.eval()
