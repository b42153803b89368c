"""Detections as KITTI result files, the input of the official devkit and of its Python ports.

One ``<frame id>.txt`` per image in ``label_2`` format plus a 16th field, the score. Only the
2D box is known, so the other fields carry the devkit's placeholders: truncated and occluded
-1, alpha -10 (the devkit then skips orientation), dimensions -1, location -1000, rotation_y -10.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from detprune.data.kitti import format_kitti_line
from detprune.data.types import DetectionSet, Detections
from detprune.errors import DetpruneError
from detprune.evaluation.inputs import check_predictions
from detprune.utils.atomic import atomic_dir


def write_kitti_results(
    dataset: DetectionSet,
    predictions: Sequence[Detections],
    out_dir: str | Path,
    *,
    class_names: Sequence[str] | None = None,
    exist_ok: bool = False,
) -> int:
    """Write one result file per image of ``dataset`` into ``out_dir``; returns the number of files.

    The frame id is the image's stem; an image without detections gets an empty file.
    ``class_names`` (default ``dataset.class_names``) names each label in the files. The folder
    is written beside ``out_dir`` and renamed into place, so it is complete or absent; an
    existing non-empty ``out_dir`` is refused unless ``exist_ok``, and then replaced as a whole.
    """
    predictions = check_predictions(dataset, predictions)
    names = list(dataset.class_names if class_names is None else class_names)
    if len(names) != len(dataset.class_names):
        raise DetpruneError(f"{len(names)} class names for the dataset's {len(dataset.class_names)} classes")
    bad = [name for name in names if not name or any(c.isspace() for c in name)]
    if bad:
        raise DetpruneError(f"class name {bad[0]!r} cannot be written in a KITTI file (empty or with a space)")
    frame_ids = [sample.image_id for sample in dataset.samples]
    if len(set(frame_ids)) != len(frame_ids):
        duplicate = next(f for f in frame_ids if frame_ids.count(f) > 1)
        raise DetpruneError(f"two images share the frame id {duplicate!r}; result files are named by frame id")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DetpruneError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not exist_ok:
        raise DetpruneError(f"{out_dir}: folder is not empty; choose another or allow overwriting it")

    with atomic_dir(out_dir) as tmp:
        for frame_id, dets in zip(frame_ids, predictions):
            lines = [
                # the shortest decimal that reads back as the same float32: any fixed rounding ties distinct
                # scores, and the official evaluator would then rank them differently from detprune's table
                format_kitti_line(names[int(label)], box.tolist(), truncated=-1.0, occluded=-1)
                + f" {score_text(score)}"
                for box, score, label in zip(dets.boxes, dets.scores, dets.labels)
            ]
            (tmp / f"{frame_id}.txt").write_text("".join(line + "\n" for line in lines))
    return len(frame_ids)


def score_text(score) -> str:
    """``score`` as a positional decimal that parses back to the same float32 (``0.000123456``, never ``1e-4``)."""
    import numpy as np

    return np.format_float_positional(np.float32(float(score)), unique=True, trim="0")
