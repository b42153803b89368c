"""The one internal form every reader produces and every consumer reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


def _empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    return np.zeros(shape, dtype=dtype)


@dataclass
class Sample:
    """One image and its boxes.

    ``boxes`` are xyxy in pixels of the original image (float64, so that a box read from a
    text file keeps the file's numbers: KITTI's height limits are compared exactly). ``labels`` index the
    dataset's ``class_names``; ``-1`` marks a region that belongs to no class (KITTI
    ``DontCare``, COCO crowd of an unknown class). ``ignore`` marks boxes that are neither
    to be found nor counted as false positives (DontCare, crowd, neighbouring classes such
    as Van for Car). ``truncation`` (0..1) and ``occlusion`` (0 visible .. 3 unknown) are
    KITTI's attributes; other sources give 0. ``source`` is each box's class as the source file
    names it (KITTI's ``type``: ``Van``, ``OtherVehicle``, ``DontCare``), "" where not kept.
    """

    image_path: Path
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: _empty((0, 4), np.float64))
    labels: np.ndarray = field(default_factory=lambda: _empty((0,), np.int64))
    ignore: np.ndarray = field(default_factory=lambda: _empty((0,), bool))
    truncation: np.ndarray = field(default_factory=lambda: _empty((0,), np.float64))
    occlusion: np.ndarray = field(default_factory=lambda: _empty((0,), np.int64))
    source: np.ndarray = field(default_factory=lambda: _empty((0,), str))

    def __post_init__(self) -> None:
        self.image_path = Path(self.image_path)
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        n = len(self.boxes)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(n)
        self.ignore = np.asarray(self.ignore if len(self.ignore) else np.zeros(n, bool), dtype=bool).reshape(n)
        self.truncation = np.asarray(
            self.truncation if len(self.truncation) else np.zeros(n), dtype=np.float64
        ).reshape(n)
        self.occlusion = np.asarray(
            self.occlusion if len(self.occlusion) else np.zeros(n), dtype=np.int64
        ).reshape(n)
        self.source = np.asarray(self.source if len(self.source) else np.full(n, ""), dtype=str).reshape(n)

    @property
    def image_id(self) -> str:
        return self.image_path.stem

    @property
    def box_heights(self) -> np.ndarray:
        return self.boxes[:, 3] - self.boxes[:, 1]

    @property
    def num_objects(self) -> int:
        """Boxes that count as objects to detect (not ignore regions)."""
        return int((~self.ignore).sum())


@dataclass
class DetectionSet:
    """A list of samples and the class names their labels index."""

    class_names: list[str]
    samples: list[Sample]
    name: str = "dataset"
    # Bad inputs the reader left out under skip_bad, per kind ("malformed line": 2, ...);
    # subsets share the dict of the read they come from.
    skipped: dict[str, int] = field(default_factory=dict)
    # How the labels depart from their protocol, said beside every number computed on them, e.g.
    # "OtherVehicle (merged Van/Truck/Tram) ignored for Car; no DontCare regions"; "" where they don't.
    deviation: str = ""

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self):
        return iter(self.samples)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return DetectionSet(self.class_names, self.samples[index], self.name, self.skipped, self.deviation)
        return self.samples[index]

    def subset(self, indices) -> "DetectionSet":
        return DetectionSet(
            self.class_names, [self.samples[i] for i in indices], self.name, self.skipped, self.deviation
        )


@dataclass
class Detections:
    """A detector's output for one image: xyxy boxes in original-image pixels."""

    boxes: np.ndarray  # (N, 4) float64 (a float32 model output converts exactly)
    scores: np.ndarray  # (N,) float32
    labels: np.ndarray  # (N,) int64, indexes the dataset's class_names

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
