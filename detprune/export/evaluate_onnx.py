"""Accuracy of an exported graph (FP32, FP16 or INT8) on ONNX Runtime, scored like the PyTorch model.

The graph sees the same letterboxed batches as :meth:`DetectorAdapter.evaluate`
(:func:`detprune.data.batch.iter_batches`), its raw output goes through the same
post-processing as the PyTorch model's (``adapter.onnx_postprocess(model)``; for YOLO ultralytics'
NMS and the letterbox mapping back to original pixels) and the detections are
scored by :func:`detprune.evaluation.protocol.evaluate_detections`. So an FP32 graph scores
what the PyTorch model scores, and the difference of a reduced-precision graph is its own.
AP_small is printed beside mAP because quantization error is largest, relative to the box,
on the few pixels a small object covers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from detprune.data.batch import Batch, as_hw, iter_batches
from detprune.data.types import DetectionSet, Detections
from detprune.errors import BadInputError
from detprune.export.onnx import OnnxModel

# what the comparison table shows: mAP .50:.95, AP at IoU .50, and AP of objects under 32x32 px
COMPARED = ("mAP", "mAP50", "AP_small")

PostProcess = Callable[[np.ndarray, Batch], list[Detections]]


def graph_input_hw(graph: OnnxModel) -> tuple[int, int]:
    """(height, width) of the graph's image input; a dynamic spatial size is refused."""
    shape = graph.input_shape
    if len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape[2:]):
        raise BadInputError(f"{graph.path}: expected an image input (B, 3, H, W) with a fixed H and W, got {shape}")
    return int(shape[2]), int(shape[3])


def evaluate_onnx(
    graph: OnnxModel | str | Path,
    dataset: DetectionSet,
    postprocess: PostProcess,
    *,
    imgsz: int | Sequence[int] | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> dict:
    """Run ``graph`` over ``dataset`` and score it with :func:`evaluate_detections`.

    ``postprocess(raw, batch)`` turns the graph's first output for one batch into one
    :class:`Detections` per image of the batch. ``imgsz`` defaults to the graph's input size
    (a different one is refused: the graph has a fixed spatial size). A graph with a fixed
    batch size gets batches of exactly that size; the last one is filled up with copies of its
    last image, whose outputs are dropped.
    """
    from detprune.evaluation.protocol import evaluate_detections
    from detprune.utils.progress import progress_bar

    runner = graph if isinstance(graph, OnnxModel) else OnnxModel(graph)
    hw = graph_input_hw(runner)
    if imgsz is not None and as_hw(imgsz) != hw:
        raise BadInputError(
            f"{runner.path}: the graph takes {hw[0]}x{hw[1]} images, asked to evaluate at {as_hw(imgsz)}"
        )
    fixed = runner.input_shape[0]
    size = fixed if isinstance(fixed, int) and fixed > 0 else int(batch_size)
    if size < 1:
        raise BadInputError(f"batch_size must be >= 1, got {batch_size}")
    total = -(-len(dataset) // size)
    predictions: list[Detections] = []
    for batch in progress_bar(iter_batches(dataset, hw, size), total=total, desc=f"evaluate {runner.path.name}",
                              disable=not progress):
        images = batch.images.numpy()
        count = images.shape[0]
        if count < size and isinstance(fixed, int):
            images = np.concatenate([images, np.repeat(images[-1:], size - count, axis=0)])
        raw = runner(images)[0][:count]
        predictions.extend(postprocess(raw, batch)[:count])
    return evaluate_detections(dataset, predictions)


def format_comparison(metrics: dict[str, dict], keys: Sequence[str] = COMPARED) -> str:
    """A table with one row per graph and the change of each metric against the first row."""
    names = list(metrics)
    base = metrics[names[0]]
    header = f"{'graph':<8}" + "".join(f" {k:>9}" for k in keys) + "".join(f" {'d' + k:>10}" for k in keys)
    lines = [header, "-" * len(header)]
    for name in names:
        row = metrics[name]
        cells = "".join(f" {_pct(row.get(k)):>9}" for k in keys)
        deltas = "".join(f" {_delta(row.get(k), base.get(k)):>10}" for k in keys)
        lines.append(f"{name:<8}{cells}{deltas}")
    lines.append("metrics as fractions in [0, 1] as 'detprune eval' prints them, COCO protocol; "
                 "d = change against " + names[0])
    return "\n".join(lines)


def _pct(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _delta(value, reference) -> str:
    if value is None or reference is None:
        return "-"
    return f"{value - reference:+.3f}"
