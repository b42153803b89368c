"""Shared fixtures: paths to the optional real data, a small synthetic KITTI set.

Tests are grouped by layer (``unit/<layer>/``, ``cli/``, ``security/``, ``e2e/``). A test module
never imports another test module: what several test modules share (builders, small models,
constants) lives in a helper module that is not a test module, named for its theme
(``<theme>_toys.py``; ``rcnn_models.py``), in the lowest folder that holds every test using it:

* beside this file, importable from every group: ``pruning_toys``, ``rcnn_models``, ``runtime_toys``;
* beside the tests of one folder, importable there: ``unit/criteria/saliency_toys``,
  ``unit/export/export_toys``, ``unit/train/finetune_toys``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# the helper modules beside this file are importable from every group; pytest puts a test module's own
# folder on sys.path when it imports it, so a folder's helper modules are importable from its tests
_TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(_TESTS))

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
