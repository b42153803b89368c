"""Keep the ultralytics trainer off the network and out of the input dataset.

Places in ultralytics 8.4 that reach for the internet or write beside the inputs during a run:

* ``check_amp`` (called by the trainer on CUDA) downloads ``yolo26n.pt`` and compares it in
  FP32 and FP16 on a bundled image. detprune instead compares the model being trained, FP32
  against autocast, on a fixed input: it needs no download, and it tests the network that will
  actually run in mixed precision (a pruned one), not a stand-in.
* ``check_font`` (called by every dataset check and by the plotting code) sends a request for
  ``Arial.ttf`` when no such font is installed. detprune uses an installed font instead:
  Arial if present, otherwise DejaVu Sans, which matplotlib ships.
* the dataset writes a ``labels/<split>.cache`` file next to the dataset's labels. detprune
  never modifies its inputs, so the labels are re-scanned each run instead (an existing cache
  is still read).
* dataset checks run a yaml's ``download:`` entry when a split is missing. That one is not
  patched: :func:`detprune.adapters.yolo.datasets.check_data_yaml` refuses such a yaml before ultralytics
  sees it.

The replacements are installed only for the duration of a trainer call (:func:`trainer_guards`),
so ultralytics behaves as shipped everywhere else in the process.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from copy import deepcopy
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

LOGGER = logging.getLogger(__name__)

# Largest relative L2 difference between FP32 and autocast head features that still allows AMP.
# FP16 rounding alone gives 2-3% on randomly initialised YOLOv5n/v8n (H200, train-mode BatchNorm);
# a broken mixed-precision setup gives non-finite values or differences near 100%.
AMP_TOLERANCE = 0.10


def local_font(font: str = "Arial.ttf") -> Path:
    """An installed font file for ``font``; never downloads."""
    from matplotlib import font_manager, get_data_path
    from ultralytics.utils import USER_CONFIG_DIR

    name = Path(font).name
    if (USER_CONFIG_DIR / name).exists():
        return USER_CONFIG_DIR / name
    for entry in font_manager.fontManager.ttflist:
        if name in entry.fname and Path(entry.fname).exists():
            return Path(entry.fname)
    return Path(get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"


def _head_inputs(model: nn.Module, image: torch.Tensor, autocast: bool) -> list[torch.Tensor]:
    """The feature maps the detection head receives for ``image`` (FP32 copies)."""
    from ultralytics.utils.torch_utils import autocast as ul_autocast

    captured: list[torch.Tensor] = []

    def grab(_module, inputs):
        features = inputs[0] if isinstance(inputs[0], (list, tuple)) else inputs
        captured.extend(f.detach().float().clone() for f in features)

    handle = model.model[-1].register_forward_pre_hook(grab)
    try:
        with torch.no_grad(), ul_autocast(autocast, device=image.device.type):
            model(image)
    finally:
        handle.remove()
    return captured


def amp_check(model: nn.Module) -> bool:
    """Whether FP16 autocast reproduces the FP32 features of ``model`` on its device.

    Same contract as ``ultralytics.utils.checks.check_amp`` (False on CPU/MPS, where AMP is not
    used; on an accelerator, True when mixed precision is safe), measured on ``model`` itself:
    the feature maps entering the detection head, FP32 against autocast, on a fixed random batch.
    """
    from ultralytics.utils.torch_utils import unwrap_model

    device = next(model.parameters()).device
    if device.type in {"cpu", "mps"}:
        return False
    # Train mode: BatchNorm normalises with batch statistics, as during training. In eval mode
    # an untrained model's running statistics shrink features below FP16's range.
    # a resumed distillation run checks its student; the frozen teacher never trains in autocast's backward
    net = deepcopy(getattr(unwrap_model(model), "student_model", None) or unwrap_model(model)).float().train()
    stride = int(max(getattr(net, "stride", torch.tensor([32.0])).max().item(), 32))
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 8 * stride, 8 * stride, generator=generator).to(device)
    try:
        full = _head_inputs(net, image, autocast=False)
        mixed = _head_inputs(net, image, autocast=True)
    except RuntimeError as err:  # e.g. no FP16 kernels for an op on this accelerator
        LOGGER.warning("AMP: autocast failed on this model (%s); training in FP32", str(err).splitlines()[0])
        return False
    worst = max(
        float((a - b).norm() / a.norm().clamp_min(1e-12)) if torch.isfinite(b).all() else float("inf")
        for a, b in zip(full, mixed)
    )
    ok = len(full) == len(mixed) > 0 and worst <= AMP_TOLERANCE
    message = f"AMP: autocast and FP32 head features of the model being trained differ by {worst:.2%} (relative L2)"
    if ok:
        LOGGER.info("%s: mixed precision on", message)
    else:
        LOGGER.warning("%s (over %.0f%%): training in FP32", message, AMP_TOLERANCE * 100)
    return ok


def skip_label_cache(prefix: str, path: Path, x: dict, version: str) -> None:
    """Stands in for ``save_dataset_cache_file``: the cache would be written into the input dataset."""
    x["version"] = version  # the caller reads the dict back expecting this key
    LOGGER.debug("%snot writing label cache %s (inputs are never modified)", prefix, path)


# module -> {attribute: replacement}; attributes are looked up at call time by the code in that module
_REPLACEMENTS: dict[str, dict[str, Callable]] = {
    "ultralytics.engine.trainer": {"check_amp": amp_check},
    "ultralytics.data.utils": {"check_font": local_font},
    "ultralytics.utils.plotting": {"check_font": local_font},
    "ultralytics.data.dataset": {"save_dataset_cache_file": skip_label_cache},
}


@contextlib.contextmanager
def trainer_guards() -> Iterator[None]:
    """Within the block, ultralytics' AMP and font checks use the local replacements above."""
    saved: list[tuple[object, str, object]] = []
    try:
        for module_name, replacements in _REPLACEMENTS.items():
            module = importlib.import_module(module_name)
            for attribute, replacement in replacements.items():
                saved.append((module, attribute, getattr(module, attribute)))
                setattr(module, attribute, replacement)
        yield
    finally:
        for module, attribute, original in reversed(saved):
            setattr(module, attribute, original)
