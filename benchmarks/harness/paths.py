"""Where the real data and weights the benchmarks default to live: ``shared/`` beside the repository."""

from __future__ import annotations

from pathlib import Path

SHARED = Path(__file__).resolve().parents[2].parent / "shared"


def add_detector_arguments(p, data) -> None:
    """``--data``, ``--model``, ``--weights``: the KITTI folder and the COCO-initialised YOLOv5n."""
    p.add_argument("--data", default=str(data), help="KITTI folder")
    p.add_argument("--model", default="yolov5n.yaml", help="architecture yaml")
    p.add_argument("--weights", default=str(SHARED / "weights" / "yolov5n_coco_backbone_neck.pt"),
                   help="state dict loaded where names and shapes match (the head is trained)")
