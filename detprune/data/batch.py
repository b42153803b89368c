"""From samples to network input: letterboxed tensors with their targets in input pixels.

Adapters, criteria and evaluation share this one batch form, so a box means the same
pixels everywhere between the dataset and the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import cv2
import numpy as np
import torch

from detprune.data.types import DetectionSet, Sample
from detprune.errors import BadInputError

PAD_VALUE = 114  # grey, as the ultralytics letterbox pads


def as_hw(imgsz: int | Sequence[int]) -> tuple[int, int]:
    """``640`` -> ``(640, 640)``; ``(384, 1280)`` stays (height, width)."""
    if isinstance(imgsz, int):
        return imgsz, imgsz
    h, w = imgsz
    return int(h), int(w)


def read_image(path) -> np.ndarray:
    """Read an image as RGB uint8, or raise a one-line error naming the file."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise BadInputError(f"{path}: cannot read image (missing, empty or not an image)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


@dataclass(frozen=True)
class Letterbox:
    """How an original image maps into the network input: ``x_in = x * scale + pad_x``."""

    scale: float
    pad_x: float
    pad_y: float

    def to_input(self, boxes: np.ndarray) -> np.ndarray:
        out = boxes.astype(np.float32) * self.scale
        out[:, [0, 2]] += self.pad_x
        out[:, [1, 3]] += self.pad_y
        return out

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        out = boxes.astype(np.float32).copy()
        out[:, [0, 2]] -= self.pad_x
        out[:, [1, 3]] -= self.pad_y
        return out / self.scale


def letterbox(image: np.ndarray, imgsz: int | Sequence[int]) -> tuple[np.ndarray, Letterbox]:
    """Resize keeping the aspect ratio to fit (H, W), pad the rest symmetrically."""
    out_h, out_w = as_hw(imgsz)
    h, w = image.shape[:2]
    scale = min(out_h / h, out_w / w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR) if (new_w, new_h) != (w, h) else image
    pad_x, pad_y = (out_w - new_w) / 2, (out_h - new_h) / 2
    left, top = int(round(pad_x - 0.1)), int(round(pad_y - 0.1))
    canvas = np.full((out_h, out_w, 3), PAD_VALUE, dtype=np.uint8)
    canvas[top : top + new_h, left : left + new_w] = resized
    return canvas, Letterbox(scale, float(left), float(top))


@dataclass
class Batch:
    """Images (B, 3, H, W) float in [0, 1], RGB; per image its targets in input pixels."""

    images: torch.Tensor
    boxes: list[torch.Tensor]  # (N, 4) xyxy, input pixels
    labels: list[torch.Tensor]  # (N,) long; -1 for class-less ignore regions
    ignore: list[torch.Tensor]  # (N,) bool
    letterboxes: list[Letterbox]
    samples: list[Sample]

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_objects(self) -> int:
        return int(sum((~ig).sum() for ig in self.ignore))

    def to(self, device) -> "Batch":
        return Batch(
            self.images.to(device),
            [b.to(device) for b in self.boxes],
            [c.to(device) for c in self.labels],
            [i.to(device) for i in self.ignore],
            self.letterboxes,
            self.samples,
        )


def collate(samples: Sequence[Sample], imgsz: int | Sequence[int]) -> Batch:
    images, boxes, labels, ignore, boxes_lb = [], [], [], [], []
    for sample in samples:
        canvas, lb = letterbox(read_image(sample.image_path), imgsz)
        images.append(torch.from_numpy(np.ascontiguousarray(canvas.transpose(2, 0, 1))))
        boxes.append(torch.from_numpy(lb.to_input(sample.boxes)))
        labels.append(torch.from_numpy(sample.labels.copy()))
        ignore.append(torch.from_numpy(sample.ignore.copy()))
        boxes_lb.append(lb)
    stacked = torch.stack(images).float().div_(255.0)
    return Batch(stacked, boxes, labels, ignore, boxes_lb, list(samples))


def iter_batches(
    dataset: DetectionSet | Sequence[Sample], imgsz: int | Sequence[int], batch_size: int = 8
) -> Iterator[Batch]:
    """Batches in dataset order (deterministic: shuffling is the caller's choice)."""
    samples = list(dataset)
    for start in range(0, len(samples), batch_size):
        yield collate(samples[start : start + batch_size], imgsz)
