"""A tiny real conv detector, its adapter and box batches for the criteria tests (float64, CPU).

The detector is a real two-block CNN with a per-cell class head; its adapter implements the
parts of the adapter contract the criteria use (activation points, utility, loss).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from detprune.adapters.base import DetectorAdapter
from detprune.criteria.saliency import BoxWeightedSaliency
from detprune.data.batch import Batch, Letterbox
from detprune.data.types import Sample

STRIDE = 4


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class TinyDetector(nn.Module):
    """Stride-4 detector: two conv blocks and a 1x1 class head (one logit per class and cell)."""

    def __init__(self, num_classes: int = 2, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.stem = Block(3, 6)
        self.mid = Block(6, 8)
        self.head = nn.Conv2d(8, num_classes, 1)
        for block in (self.stem, self.mid):  # non-trivial normalisation, but zero in, zero out
            block.bn.weight.data.uniform_(0.5, 1.5)
            block.bn.running_var.uniform_(0.5, 2.0)
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mid(self.stem(x)))


def centre_cells(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    return (centre[:, 1] // STRIDE).long(), (centre[:, 0] // STRIDE).long()


class TinyAdapter(DetectorAdapter):
    """What the criteria need from an adapter, for :class:`TinyDetector`."""

    family = "tiny"

    @classmethod
    def handles(cls, spec) -> bool:
        return False

    def activation_points(self, model: TinyDetector) -> dict[str, nn.Module]:
        return {"stem.conv": model.stem, "mid.conv": model.mid}

    def detection_utility(self, model: TinyDetector, batch: Batch) -> torch.Tensor:
        logits = model(batch.images.to(torch.float64))
        total = logits.new_zeros(())
        for b, (boxes, labels, ignore) in enumerate(zip(batch.boxes, batch.labels, batch.ignore)):
            keep = ~ignore
            rows, cols = centre_cells(boxes[keep])
            total = total + logits[b, labels[keep], rows, cols].sigmoid().sum()
        return total

    def detection_loss(self, model: TinyDetector, batch: Batch) -> torch.Tensor:
        logits = model(batch.images.to(torch.float64))
        target = torch.zeros_like(logits)
        for b, (boxes, labels, ignore) in enumerate(zip(batch.boxes, batch.labels, batch.ignore)):
            rows, cols = centre_cells(boxes[~ignore])
            target[b, labels[~ignore], rows, cols] = 1.0
        return F.binary_cross_entropy_with_logits(logits, target, reduction="sum")

    # the rest of the contract is not used by criteria
    def _unused(self, *args, **kwargs):
        raise NotImplementedError("not needed by the criteria under test")

    load = class_names = prepare_for_pruning = example_inputs = protected_layers = _unused
    predict = finetune = save = load_checkpoint = _unused


def make_batch(images: list[torch.Tensor], boxes: list[list], labels=None, ignore=None) -> Batch:
    """A batch from (3, H, W) tensors in [0, 1] and xyxy boxes in input pixels."""
    boxes_t = [torch.tensor(b, dtype=torch.float32).reshape(-1, 4) for b in boxes]
    labels_t = [torch.tensor(l if l is not None else [0] * len(b), dtype=torch.long)
                for l, b in zip(labels or [None] * len(boxes), boxes_t)]
    ignore_t = [torch.tensor(i if i is not None else [False] * len(b), dtype=torch.bool)
                for i, b in zip(ignore or [None] * len(boxes), boxes_t)]
    h, w = images[0].shape[-2:]
    samples = [Sample(Path(f"memory_{i}.png"), w, h, b.numpy(), l.numpy(), g.numpy())
               for i, (b, l, g) in enumerate(zip(boxes_t, labels_t, ignore_t))]
    return Batch(torch.stack(images), boxes_t, labels_t, ignore_t, [Letterbox(1.0, 0.0, 0.0)] * len(images), samples)


def random_image(seed: int, size: int = 32) -> torch.Tensor:
    return torch.rand(3, size, size, generator=torch.Generator().manual_seed(seed))


def quiet(**options) -> BoxWeightedSaliency:
    return BoxWeightedSaliency(progress=False, **options)


BOXES = [[[2, 3, 14, 12], [18, 16, 30, 31]], [[5, 20, 9, 27]], [[0, 0, 31, 31], [10, 4, 22, 13]]]
LABELS = [[0, 1], [1], [0, 0]]
