"""The ultralytics checkpoint format as detprune reads it: whole checkpoints and state-dict files.

Read without running code stored in the file (:mod:`detprune.utils.checkpoints`); what
ultralytics' own loader sets up on the model is set up here too.
"""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detprune.errors import BadInputError

LOGGER = logging.getLogger(__name__)


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


def _is_ultralytics_checkpoint(path: Path) -> bool:
    """A torch zip whose pickle references ultralytics classes (cheap: no unpickling)."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
            return any(b"ultralytics" in archive.read(n) for n in pickles)
    except (OSError, zipfile.BadZipFile):
        return "yolo" in path.name.lower()  # unreadable: claim it when named so, load() reports why


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
        message = (f"weights {path}: loaded {counts} (--partial-weights); "
                   f"the other {len(wanted) - len(loaded)} stay as initialised")
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
