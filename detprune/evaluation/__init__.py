"""Evaluation: the COCO and KITTI protocols over detections, and the run report.

Knows data types only, never a detector: adapters turn a model into
:class:`~detprune.data.types.Detections` and call :func:`evaluate_detections`.
Plots live in :mod:`detprune.evaluation.plots` (imported on demand: it pulls in matplotlib).
"""

from detprune.evaluation.coco import evaluate_coco
from detprune.evaluation.kitti import evaluate_kitti
from detprune.evaluation.protocol import evaluate_detections, looks_like_kitti
from detprune.evaluation.report import Latency, ModelSummary, Report

__all__ = [
    "evaluate_coco",
    "evaluate_kitti",
    "evaluate_detections",
    "looks_like_kitti",
    "Latency",
    "ModelSummary",
    "Report",
]
