"""Shared fixtures: paths to the optional real data, a small synthetic KITTI set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")
os.environ.setdefault("DETPRUNE_QUIET", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
KITTI_TINY = SHARED / "data" / "kitti_tiny"
YOLOV5N_BACKBONE = SHARED / "weights" / "yolov5n_coco_backbone_neck.pt"


@pytest.fixture(scope="session")
def kitti_tiny() -> Path:
    """The 75 real KITTI frames beside the repository; skips where they are absent."""
    if not (KITTI_TINY / "training" / "label_2").is_dir():
        pytest.skip(f"real KITTI frames not found at {KITTI_TINY}")
    return KITTI_TINY


@pytest.fixture(scope="session")
def yolov5n_backbone() -> Path:
    if not YOLOV5N_BACKBONE.is_file():
        pytest.skip(f"pretrained YOLOv5n backbone not found at {YOLOV5N_BACKBONE}")
    return YOLOV5N_BACKBONE


@pytest.fixture(scope="session")
def synthetic_kitti(tmp_path_factory) -> Path:
    """A small synthetic KITTI-format set (image_2/, label_2/), generated once per session."""
    from detprune.data.synthetic import generate_scenes

    root = tmp_path_factory.mktemp("synthetic") / "kitti"
    generate_scenes(root, num_images=12, seed=0, width=416, height=128)
    return root
