"""From samples to network input: letterboxed tensors with their targets in input pixels.

Adapters, criteria and evaluation share this one batch form, so a box means the same
pixels everywhere between the dataset and the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import cv2
import numpy as np
import torch

from detprune.data.types import DetectionSet, Sample
from detprune.defaults import LETTERBOX_MODES
from detprune.errors import BadInputError

PAD_VALUE = 114  # grey, as the ultralytics letterbox pads
RECT_PAD = 0.5  # strides of border ultralytics' val rect adds (its dataset ``pad`` outside training)


def train_side(imgsz: int | Sequence[int]) -> int:
    """The size a trainer that takes one number gets: the long side (ultralytics trains at it, rect or square)."""
    return imgsz if isinstance(imgsz, int) else max(int(imgsz[0]), int(imgsz[1]))


def as_hw(imgsz: int | Sequence[int]) -> tuple[int, int]:
    """``640`` -> ``(640, 640)``; ``(384, 1280)`` stays (height, width); each side 1 to 8192 (one-line error)."""
    from detprune.utils.numbers import image_size

    if not isinstance(imgsz, (list, tuple, np.ndarray)):
        side = image_size(imgsz, "imgsz")
        return side, side
    if len(imgsz) != 2:
        raise BadInputError(f"imgsz must be one size or (height, width), got {imgsz!r}")
    h, w = imgsz
    return image_size(h, "imgsz height"), image_size(w, "imgsz width")


def read_image(path) -> np.ndarray:
    """Read an image as RGB uint8, or raise a one-line error naming the file."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise BadInputError(f"{path}: cannot read image (missing, empty or not an image)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


@dataclass(frozen=True)
class Letterbox:
    """How an original image maps into the network input: ``x_in = x * scale + pad_x``,
    ``y_in = y * scale_y + pad_y`` (``scale_y`` None: ``scale``, one gain for both axes).

    The rect letterbox rounds each resized side up, so its two gains differ slightly; boxes map
    back per axis, as ultralytics' ``scale_boxes`` does with the val loader's ``ratio_pad``.
    """

    scale: float
    pad_x: float
    pad_y: float
    scale_y: float | None = None

    @property
    def gains(self) -> np.ndarray:
        """(x, y, x, y) gains of an xyxy box."""
        sy = self.scale if self.scale_y is None else self.scale_y
        return np.array([self.scale, sy, self.scale, sy], dtype=np.float32)

    def to_input(self, boxes: np.ndarray) -> np.ndarray:
        out = boxes.astype(np.float32) * self.gains
        out[:, [0, 2]] += self.pad_x
        out[:, [1, 3]] += self.pad_y
        return out

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        out = boxes.astype(np.float32).copy()
        out[:, [0, 2]] -= self.pad_x
        out[:, [1, 3]] -= self.pad_y
        return out / self.gains


def rect_shape(sizes: Sequence[tuple[int, int]], imgsz: int | Sequence[int], stride: int = 32) -> tuple[int, int]:
    """The (H, W) canvas of an ultralytics val rect batch of images of ``sizes`` (height, width).

    As ``YOLODataset.set_rectangle``: with every image wider than tall the shape is
    (max h/w, 1), with every image taller than wide (1, 1 / min h/w), else (1, 1); times the
    long side, plus half a stride, rounded up to the stride.
    """
    long_side = max(as_hw(imgsz))
    ratios = [h / w for h, w in sizes]
    low, high = min(ratios), max(ratios)
    shape = (high, 1.0) if high < 1 else (1.0, 1.0 / low) if low > 1 else (1.0, 1.0)
    h, w = (int(math.ceil(side * long_side / stride + RECT_PAD)) * stride for side in shape)
    return h, w


def letterbox(
    image: np.ndarray, imgsz: int | Sequence[int], scale: float | None = None
) -> tuple[np.ndarray, Letterbox]:
    """Resize keeping the aspect ratio to fit (H, W) (or by ``scale``), pad the rest symmetrically."""
    out_h, out_w = as_hw(imgsz)
    h, w = image.shape[:2]
    scale = min(out_h / h, out_w / w) if scale is None else scale
    new_w, new_h = min(out_w, max(1, round(w * scale))), min(out_h, max(1, round(h * scale)))
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR) if (new_w, new_h) != (w, h) else image
    canvas, left, top = _pad(resized, out_h, out_w)
    return canvas, Letterbox(scale, left, top)


def rect_letterbox(image: np.ndarray, canvas_hw: tuple[int, int], long_side: int) -> tuple[np.ndarray, Letterbox]:
    """ultralytics' val loader: the long side to ``long_side``, then padded centred into ``canvas_hw``.

    As its ``load_image``: ratio r = long_side / max(h, w); each side becomes ceil(side * r),
    at most ``long_side`` (the cap absorbs float error on the long side), bilinear
    (cv2.INTER_LINEAR). Its LetterBox (no upscaling) then only pads, since the rect canvas is
    larger than the image. The gains are per axis (new / old side), as its ``ratio_pad``.
    """
    h, w = image.shape[:2]
    r = long_side / max(h, w)
    new_w, new_h = (min(math.ceil(w * r), long_side), min(math.ceil(h * r), long_side)) if r != 1 else (w, h)
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR) if (new_w, new_h) != (w, h) else image
    canvas, left, top = _pad(resized, *canvas_hw)
    return canvas, Letterbox(new_w / w, left, top, scale_y=new_h / h)


def _pad(image: np.ndarray, out_h: int, out_w: int) -> tuple[np.ndarray, float, float]:
    """``image`` centred on a grey (out_h, out_w) canvas, the odd pixel right and below as ultralytics'."""
    h, w = image.shape[:2]
    left, top = int(round((out_w - w) / 2 - 0.1)), int(round((out_h - h) / 2 - 0.1))
    canvas = np.full((out_h, out_w, 3), PAD_VALUE, dtype=np.uint8)
    canvas[top : top + h, left : left + w] = image
    return canvas, float(left), float(top)


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


def collate(samples: Sequence[Sample], imgsz: int | Sequence[int], *, rect: bool = False, stride: int = 32) -> Batch:
    """One batch; ``rect``: ultralytics' val rect canvas for these images (:func:`rect_shape`)."""
    canvas_hw = rect_shape([(s.height, s.width) for s in samples], imgsz, stride) if rect else as_hw(imgsz)
    long_side = max(as_hw(imgsz))
    images, boxes, labels, ignore, boxes_lb = [], [], [], [], []
    for sample in samples:
        image = read_image(sample.image_path)
        canvas, lb = rect_letterbox(image, canvas_hw, long_side) if rect else letterbox(image, canvas_hw)
        images.append(torch.from_numpy(np.ascontiguousarray(canvas.transpose(2, 0, 1))))
        boxes.append(torch.from_numpy(lb.to_input(sample.boxes)))
        labels.append(torch.from_numpy(sample.labels.copy()))
        ignore.append(torch.from_numpy(sample.ignore.copy()))
        boxes_lb.append(lb)
    stacked = torch.stack(images).float().div_(255.0)
    return Batch(stacked, boxes, labels, ignore, boxes_lb, list(samples))


def iter_batches(
    dataset: DetectionSet | Sequence[Sample],
    imgsz: int | Sequence[int],
    batch_size: int = 8,
    *,
    letterbox: str = "square",
    stride: int = 32,
) -> Iterator[Batch]:
    """Batches in dataset order (deterministic: shuffling is the caller's choice).

    ``letterbox``: ``square`` (every image padded into ``imgsz``) or ``rect`` (per batch the
    canvas ultralytics' val uses, sides a multiple of ``stride``; see :func:`rect_shape`).
    """
    if letterbox not in LETTERBOX_MODES:
        raise BadInputError(f"letterbox {letterbox!r}: choose {' or '.join(LETTERBOX_MODES)}")
    samples = list(dataset)
    for start in range(0, len(samples), batch_size):
        yield collate(samples[start : start + batch_size], imgsz, rect=letterbox == "rect", stride=stride)
