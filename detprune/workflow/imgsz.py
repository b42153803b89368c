"""One input size for every command: the one given, else the model's own training size, else the default.

A checkpoint trained by ultralytics (or by ``detprune train`` / ``finetune``) records the size it
was trained at (``train_args['imgsz']``); a model read from it is scored, pruned, evaluated,
exported and timed at that size unless ``--imgsz`` says otherwise. An architecture (a yaml,
a torchvision name) has none: :data:`~detprune.defaults.DEFAULT_IMGSZ`.
"""

from __future__ import annotations

from typing import Any, Sequence

from detprune.defaults import DEFAULT_IMGSZ


def trained_imgsz(model: Any) -> int | tuple[int, int] | None:
    """The input size ``model`` was trained at, where its checkpoint recorded one."""
    args = getattr(model, "args", None)
    get = args.get if isinstance(args, dict) else (lambda key: getattr(args, key, None))
    if not get("data"):  # trainer defaults of a model built from its yaml: trained on nothing yet
        return None
    value = get("imgsz")
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value >= 32:
        return value
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) and v >= 32 for v in value):
        return int(value[0]), int(value[1])
    return None


def resolve_imgsz(given: int | Sequence[int] | None, model: Any = None) -> int | tuple[int, int]:
    """``given``, else the model's training size, else :data:`DEFAULT_IMGSZ`."""
    if given is not None:
        return given if isinstance(given, int) else (int(given[0]), int(given[1]))
    return trained_imgsz(model) or DEFAULT_IMGSZ


def imgsz_source(given: Any, model: Any = None) -> str:
    """Where the size came from, for a command's summary line."""
    if given is not None:
        return "--imgsz"
    return "the model's training size" if trained_imgsz(model) else "the default"


def input_shape(
    dataset: Any, imgsz: int | Sequence[int], letterbox: str = "square", stride: int = 32
) -> tuple[int, int]:
    """(H, W) the network sees: the fixed canvas for ``square``; for ``rect``, ultralytics' val
    rect canvas of the data's most common frame size (a 1242x375 KITTI frame at 640: 224x640)."""
    from collections import Counter

    from detprune.data.batch import as_hw, rect_shape

    if letterbox != "rect" or dataset is None or len(dataset) == 0:
        return as_hw(imgsz)
    ((size, _),) = Counter((s.height, s.width) for s in dataset.samples).most_common(1)
    return rect_shape([size], imgsz, stride)
