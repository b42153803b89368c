"""Scoring an exported YOLO graph: the post-processing of ``YoloAdapter.export_module``'s output.

Used through :meth:`detprune.adapters.base.DetectorAdapter.onnx_postprocess` by
:func:`detprune.export.evaluate_onnx.evaluate_onnx`.
"""

from __future__ import annotations

import numpy as np
import torch

from detprune.adapters.base import PostProcess
from detprune.adapters.yolo.objective import postprocess
from detprune.data.batch import Batch
from detprune.data.types import Detections
from detprune.defaults import EVAL_CONF, EVAL_MAX_DET, YOLO_NMS_IOU


def yolo_postprocess(nc: int, *, end2end: bool = False, conf: float | None = None, iou: float | None = None,
                     max_det: int | None = None) -> PostProcess:
    """The YOLO adapter's post-processing for a graph of ``adapter.export_module(model)``.

    The defaults are :meth:`YoloAdapter.predict`'s, so scores match ``adapter.evaluate``.
    """
    conf = EVAL_CONF if conf is None else conf
    iou = YOLO_NMS_IOU if iou is None else iou
    max_det = EVAL_MAX_DET if max_det is None else max_det

    def run(raw: np.ndarray, batch: Batch) -> list[Detections]:
        return postprocess(torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float32)), batch, nc=nc,
                           end2end=end2end, conf=conf, iou=iou, max_det=max_det)

    return run


def yolo_head_info(model: torch.nn.Module) -> dict:
    """``nc`` and ``end2end`` of an ultralytics model: what :func:`yolo_postprocess` needs."""
    return {"nc": int(model.model[-1].nc), "end2end": bool(getattr(model, "end2end", False))}
