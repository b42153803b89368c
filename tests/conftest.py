"""Shared fixtures: paths to the optional real data, a small synthetic KITTI set.

Tests are grouped by layer (``unit/<layer>/``, ``cli/``, ``security/``, ``e2e/``); the helper
modules beside this file (``pruning_toys``, ``rcnn_models``) are importable from every group.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# the helper modules here, and the groups' modules, whose fixtures and builders other groups reuse
# (``from test_saliency import make_batch``): every group folder is importable as a top-level module
_TESTS = Path(__file__).resolve().parent
sys.path[:0] = [str(_TESTS), *sorted(str(d) for d in _TESTS.glob("*/**") if d.is_dir() and d.name != "__pycache__")]

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


# Fixtures whose tests read the real data beside the repository (../shared): those tests are
# marked ``shared`` and ``slow`` here, so `-m "not slow"` runs the quick suite without them.
REAL_DATA_FIXTURES = {"kitti_tiny", "yolov5n_backbone"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if REAL_DATA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.shared)
            item.add_marker(pytest.mark.slow)
