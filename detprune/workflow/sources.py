"""What kind of source a dataset argument names, where a command's output depends on it."""

from __future__ import annotations

from pathlib import Path


def is_kitti_source(spec) -> bool:
    """A KITTI folder (``label_2/``) or a dataset yaml of format ``kitti`` / ``synthetic``: the data
    KITTI's easy / moderate / hard levels are defined on (their heights, truncation, occlusion).
    A YOLO or COCO set with KITTI's class names is not: every box would fall in one level."""
    from detprune.data.kitti import find_kitti_dirs
    from detprune.data.yolo_format import load_yaml

    path = Path(str(spec))
    if path.is_dir():
        return find_kitti_dirs(path) is not None
    if path.suffix.lower() in (".yaml", ".yml") and path.is_file():
        data = load_yaml(path)
        return isinstance(data, dict) and str(data.get("format", "")) in ("kitti", "synthetic")
    return False
