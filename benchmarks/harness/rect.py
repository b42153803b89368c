"""ultralytics' rect input: the canvas a set of landscape frames shares, and the trainer settings at it."""

from __future__ import annotations

import math

from detprune.data.types import DetectionSet
from detprune.errors import DetpruneError

STRIDE = 32


def rect_hw(dataset: DetectionSet, width: int, stride: int = STRIDE) -> tuple[int, int]:
    """ultralytics' rect batch shape for images this wide: the widest aspect ratio, height rounded up to the stride.

    ``set_rectangle`` takes the batch's largest h/w ratio and ``ceil(ratio * imgsz / stride) * stride``
    (no extra pad in training); every kitti_tiny frame gives 375/1242 -> 640x224.
    """
    ratio = max(s.height / s.width for s in dataset.samples)
    if ratio > 1:
        raise DetpruneError("rect input here assumes landscape frames (height < width)")
    return int(math.ceil(ratio * width / stride) * stride), int(width)


def rect_train_options(args, seed: int) -> dict:
    """ultralytics' trainer at ``args.width`` wide with rect batches (which turn mosaic off), shuffled, seeded.

    SGD (``args.lr``) with a one-epoch warm-up; ``workers=0`` keeps augmentation in this process,
    seeded. These settings enter the cache keys of the baselines and rows trained with them.
    """
    return {"imgsz": args.width, "rect": True, "batch": args.batch, "lr0": args.lr, "seed": seed, "warmup_epochs": 1,
            "deterministic": True, "workers": 0, "plots": False}


def add_training_arguments(p, *, baseline_epochs: int, finetune_epochs: int) -> None:
    """The rect-batch trainer's settings a benchmark takes: width, batch, lr and the two epoch budgets."""
    p.add_argument("--width", type=int, default=640, help="input width; rect batches give the height")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (baseline and fine-tunes)")
    p.add_argument("--baseline-epochs", type=int, default=baseline_epochs)
    p.add_argument("--finetune-epochs", type=int, default=finetune_epochs, help="the equal budget of every row")
