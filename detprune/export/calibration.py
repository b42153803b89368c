"""Calibration images for INT8: chosen from a dataset by seed, letterboxed as the model sees them.

Post-training quantization measures activation ranges on real inputs; the images must be
prepared exactly as at inference (letterbox to the network size, grey padding, RGB, [0, 1])
or the ranges are those of another distribution. The same seed picks the same images, so two
builds from the same data calibrate alike. One more image than asked for is held out (never
calibrated on) so that the quantized graph is compared with the FP32 one on an unseen frame.
"""

from __future__ import annotations

import importlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from detprune.data.batch import as_hw, letterbox, read_image
from detprune.errors import BadInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
DEFAULT_CALIB_IMAGES = 300


def find_images(source: str | Path) -> list[Path]:
    """Every image of a dataset folder, in a fixed (sorted) order.

    Understands a KITTI root (``image_2`` or ``training/image_2``), a YOLO-format root
    (``images/``), any dataset ``detprune.data.loader.load_dataset`` reads where that module
    exists, and otherwise takes every image below ``source``.
    """
    source = Path(source)
    if not source.exists():
        raise BadInputError(f"{source}: calibration folder not found; give --data a dataset or image folder")
    if source.is_file():
        raise BadInputError(f"{source}: calibration data must be a folder of images or a dataset root, not a file")
    images = _dataset_images(source)
    if images is None:
        images = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise BadInputError(f"{source}: no images ({', '.join(IMAGE_SUFFIXES)}) found for calibration")
    return images


def _dataset_images(source: Path) -> list[Path] | None:
    from detprune.data.kitti import find_kitti_dirs

    kitti = find_kitti_dirs(source)
    if kitti is not None:
        return sorted(p for p in kitti[0].iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if (source / "images").is_dir():
        return sorted(p for p in (source / "images").rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    try:
        loader = importlib.import_module("detprune.data.loader")
    except ImportError:
        return None
    load_dataset = getattr(loader, "load_dataset", None)
    if load_dataset is None:
        return None
    try:
        dataset = load_dataset(source)
    except Exception:  # not a dataset this loader knows: fall back to a plain image folder
        return None
    return sorted({Path(s.image_path) for s in dataset})


@dataclass(frozen=True)
class CalibrationSplit:
    """Images to calibrate on, and one held out for the parity check (None if too few)."""

    calibration: list[Path]
    holdout: Path | None


def select_images(source: str | Path, count: int = DEFAULT_CALIB_IMAGES, seed: int = 0) -> CalibrationSplit:
    """``count`` images of ``source`` drawn by ``seed``, plus one held-out image.

    Deterministic: the same folder content, count and seed give the same list in the same
    order, whatever order the file system lists files in.
    """
    if count < 1:
        raise BadInputError(f"--calib-images must be at least 1, got {count}")
    images = find_images(source)
    rng = random.Random(seed)
    drawn = rng.sample(images, min(count + 1, len(images)))
    if len(drawn) > count:
        return CalibrationSplit(drawn[:count], drawn[count])
    # too few images to hold one out: calibrate on all, compare on the first of them
    return CalibrationSplit(drawn, None)


def load_image(path: str | Path, imgsz: int | Sequence[int]) -> np.ndarray:
    """One image as the network sees it: (3, H, W) float32 RGB in [0, 1], letterboxed."""
    canvas, _ = letterbox(read_image(path), as_hw(imgsz))
    return np.ascontiguousarray(canvas.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)


def iter_batches(paths: Sequence[Path], imgsz: int | Sequence[int], batch_size: int = 1) -> Iterator[np.ndarray]:
    """(B, 3, H, W) float32 batches; a last batch short of ``batch_size`` is dropped, since a
    graph with a fixed batch cannot take it."""
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        if len(chunk) < batch_size:
            return
        yield np.stack([load_image(p, imgsz) for p in chunk])
