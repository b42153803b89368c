"""Building torchvision Faster R-CNN models, reading state dicts, and detprune's own checkpoint.

Models are built with ``weights=None, weights_backbone=None`` (nothing is downloaded). Given a
trained state dict, the backbone is first put in the layout torchvision gives its pretrained
detectors (``FrozenBatchNorm2d`` with eps 1e-5 in the ResNet-50 and MobileNetV3 bodies; the
v2 model uses trainable ``BatchNorm2d``), so a torchvision COCO checkpoint computes exactly
what it computes in torchvision.

A detprune checkpoint is a plain ``torch.save`` dict that ``torch.load(weights_only=True)``
reads without executing code: the architecture name, the class names, every conv / linear /
norm layer's type and widths, the state dict and the transform's sizes. Reloading builds the
architecture, resizes the layers to the recorded (pruned) widths and loads the tensors
strictly, so a pruned model comes back with one call and any mismatch is an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from detprune.adapters.rcnn.rewrites import freeze_batchnorm
from detprune.errors import BadInputError, UnsupportedError
from detprune.utils.checkpoints import load_torch_file

FORMAT = "detprune.rcnn"
FORMAT_VERSION = 1
PREDICTOR = "roi_heads.box_predictor."
PRETRAINED_NORM_EPS = 1e-5  # torchvision's FrozenBatchNorm2d default, used by all its pretrained detectors


@dataclass(frozen=True)
class Architecture:
    name: str
    frozen_backbone_norm: bool  # torchvision's pretrained layout freezes the backbone body's norms


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture("fasterrcnn_resnet50_fpn", True),
        Architecture("fasterrcnn_resnet50_fpn_v2", False),
        Architecture("fasterrcnn_mobilenet_v3_large_fpn", True),
        Architecture("fasterrcnn_mobilenet_v3_large_320_fpn", True),
    )
}


def architecture_of_name(text: str) -> str | None:
    """The architecture a bare name means (``fasterrcnn_resnet50_fpn``), else None."""
    name = str(text).strip().lower()
    return name if name in ARCHITECTURES else None


def architecture_of_file(path: Path) -> str | None:
    """The architecture a weights file is named after (``fasterrcnn_resnet50_fpn_coco-258fb6c6.pth``)."""
    stem = path.name.lower()
    for name in sorted(ARCHITECTURES, key=len, reverse=True):  # longest first: "..._fpn_v2" before "..._fpn"
        if stem.startswith(name) and (len(stem) == len(name) or not stem[len(name)].isalnum()):
            return name
    return None


def default_class_names(num_classes: int) -> list[str]:
    """COCO's category names for a 91-way model (torchvision's numbering, 'N/A' gaps kept), else class<i>."""
    from torchvision.models._meta import _COCO_CATEGORIES

    if num_classes == len(_COCO_CATEGORIES):
        return list(_COCO_CATEGORIES[1:])
    return [f"class{i}" for i in range(num_classes - 1)]


def build(arch: str, num_classes: int, *, pretrained_layout: bool) -> nn.Module:
    """The torchvision model, randomly initialised; ``pretrained_layout`` freezes the backbone norms as torchvision
    does."""
    import torchvision.models.detection as detection

    if arch not in ARCHITECTURES:
        raise UnsupportedError(f"{arch}: unknown Faster R-CNN architecture; choose from {', '.join(ARCHITECTURES)}")
    if num_classes < 2:
        raise BadInputError(
            f"{arch}: a detector needs at least one class besides background (got num_classes={num_classes})"
        )
    model = getattr(detection, arch)(weights=None, weights_backbone=None, num_classes=num_classes)
    if pretrained_layout and ARCHITECTURES[arch].frozen_backbone_norm:
        freeze_batchnorm(model.backbone.body, eps=PRETRAINED_NORM_EPS)
    return model


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a state-dict file (bare, or under 'state_dict' / 'model'), or a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(
            f"{path}: weights file not found (weights are never downloaded; give a local .pth state dict)"
        )
    data = load_torch_file(path, what="weights")  # one-line errors for damaged or code-carrying files
    if isinstance(data, dict) and data.get("format") == FORMAT:
        raise BadInputError(f"{path}: this is a detprune checkpoint; load it as the model, not as weights=")
    for key in ("state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    if not isinstance(data, dict) or not data or not all(torch.is_tensor(v) for v in data.values()):
        raise BadInputError(
            f"{path}: no state dict inside (expected a dict of tensors, or one under 'state_dict' or 'model')"
        )
    return data


def num_classes_in(state: dict[str, torch.Tensor]) -> int | None:
    weight = state.get(PREDICTOR + "cls_score.weight")
    return int(weight.shape[0]) if weight is not None else None


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path, *, rehead: bool = False) -> None:
    """Copy ``state`` into ``model``; every tensor must match by name and shape, or a one-line error.

    ``rehead`` leaves the box predictor freshly initialised (a new class set) and loads the rest.
    """
    if rehead:
        state = {k: v for k, v in state.items() if not k.startswith(PREDICTOR)}
    own = model.state_dict()
    counter = "num_batches_tracked"  # BatchNorm bookkeeping; FrozenBatchNorm2d has none
    missing = [
        k for k in own if k not in state and not k.endswith(counter) and not (rehead and k.startswith(PREDICTOR))
    ]
    unexpected = [k for k in state if k not in own and not k.endswith(counter)]
    mismatched = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} model tensors missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unknown names (e.g. {unexpected[0]})")
        if mismatched:
            k = mismatched[0]
            parts.append(
                f"{len(mismatched)} shape mismatches (e.g. {k}: file {tuple(state[k].shape)}, model "
                f"{tuple(own[k].shape)})"
            )
        raise BadInputError(f"{source}: not a state dict of this architecture: " + "; ".join(parts))
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


# --- detprune checkpoints -----------------------------------------------------------------------

_LAYER_TYPES = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, FrozenBatchNorm2d)


def layer_specs(model: nn.Module) -> dict[str, dict]:
    """Type and widths of every conv, linear and norm layer: what a rebuild needs to resize."""
    specs: dict[str, dict] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            specs[name] = {"type": "Conv2d", "in": m.in_channels, "out": m.out_channels, "groups": m.groups}
        elif isinstance(m, nn.Linear):
            specs[name] = {"type": "Linear", "in": m.in_features, "out": m.out_features}
        elif isinstance(m, nn.BatchNorm2d):
            specs[name] = {"type": "BatchNorm2d", "features": m.num_features, "eps": float(m.eps)}
        elif isinstance(m, FrozenBatchNorm2d):
            specs[name] = {"type": "FrozenBatchNorm2d", "features": int(m.weight.shape[0]), "eps": float(m.eps)}
    return specs


def _rebuilt(old: nn.Module, spec: dict) -> nn.Module:
    kind = spec["type"]
    if kind == "Conv2d" and isinstance(old, nn.Conv2d):
        return nn.Conv2d(
            spec["in"], spec["out"], old.kernel_size, old.stride, old.padding, old.dilation, spec["groups"],
            bias=old.bias is not None, padding_mode=old.padding_mode,
        )
    if kind == "Linear" and isinstance(old, nn.Linear):
        return nn.Linear(spec["in"], spec["out"], bias=old.bias is not None)
    if kind == "BatchNorm2d" and isinstance(old, (nn.BatchNorm2d, FrozenBatchNorm2d)):
        return nn.BatchNorm2d(spec["features"], eps=spec["eps"])
    if kind == "FrozenBatchNorm2d" and isinstance(old, (nn.BatchNorm2d, FrozenBatchNorm2d)):
        return FrozenBatchNorm2d(spec["features"], eps=spec["eps"])
    raise ValueError(f"layer type {kind} does not fit the architecture's {type(old).__name__}")


def resize_layers(model: nn.Module, specs: dict[str, dict]) -> None:
    """Replace every layer whose recorded type or widths differ from ``model``'s (in place)."""
    current = layer_specs(model)
    for name, spec in specs.items():
        if current.get(name) == spec:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, _rebuilt(parent.get_submodule(child), spec))


def _plain(value: Any) -> Any:
    """``meta`` as JSON types, so the checkpoint loads with ``weights_only=True``."""
    return json.loads(json.dumps(value, default=str))


def checkpoint_dict(model: nn.Module, arch: str, class_names: Sequence[str], meta: dict | None) -> dict:
    transform = model.transform
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "date": datetime.now(timezone.utc).isoformat(),
        "arch": arch,
        "num_classes": len(class_names) + 1,
        "class_names": [str(n) for n in class_names],
        "layers": layer_specs(model),
        "transform": {"min_size": [int(s) for s in transform.min_size], "max_size": int(transform.max_size)},
        "state_dict": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
        "meta": _plain(meta or {}),
    }


def is_checkpoint_file(path: Path) -> bool:
    """Cheap test (no unpickling of tensors): a torch zip whose pickle carries detprune's format tag."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return any(FORMAT.encode() in archive.read(n) for n in archive.namelist() if n.endswith("data.pkl"))
    except (OSError, zipfile.BadZipFile, KeyError):
        return False


def model_from_checkpoint(path: str | Path) -> tuple[nn.Module, dict]:
    """(the model with its saved widths and weights, in eval mode; the checkpoint dict without tensors)."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: checkpoint not found")
    data = load_torch_file(path, what="checkpoint")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BadInputError(f"{path}: not a detprune Faster R-CNN checkpoint (write one with RcnnAdapter.save)")
    if int(data.get("format_version", 0)) > FORMAT_VERSION:
        raise UnsupportedError(
            f"{path}: checkpoint format {data['format_version']} is newer than this detprune reads ({FORMAT_VERSION})"
        )
    try:
        arch, class_names, specs, state = data["arch"], list(data["class_names"]), data["layers"], data["state_dict"]
    except KeyError as exc:
        raise BadInputError(f"{path}: checkpoint lacks the field {exc.args[0]!r}") from None
    model = build(arch, len(class_names) + 1, pretrained_layout=False)
    try:
        resize_layers(model, specs)
        model.load_state_dict(state, strict=True)
    except (ValueError, RuntimeError, AttributeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BadInputError(f"{path}: checkpoint does not rebuild as {arch} ({first[:200]})") from None
    transform = data.get("transform") or {}
    if transform:
        model.transform.min_size = tuple(int(s) for s in transform["min_size"])
        model.transform.max_size = int(transform["max_size"])
    info = {k: v for k, v in data.items() if k != "state_dict"}
    return model.eval(), info
