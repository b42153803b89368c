"""``random``: a uniform random score per channel, the baseline every criterion must beat.

Seeded: the same seed gives the same scores for the same layers, whatever else was drawn
before (a private generator; torch's global random state is untouched). Each layer's draw
depends only on the seed and the layer's name, so adding a layer elsewhere changes nothing.
"""

from __future__ import annotations

import zlib
from typing import Iterable

import torch
from torch import nn

from detprune.adapters.base import DetectorAdapter
from detprune.criteria.base import ChannelScores, Criterion, register_criterion
from detprune.data.batch import Batch


@register_criterion
class RandomScores(Criterion):
    name = "random"
    needs_data = False

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def options(self) -> dict:
        return {"seed": self.seed}

    def score(self, adapter: DetectorAdapter, model: nn.Module, batches: Iterable[Batch] = ()) -> ChannelScores:
        modules = dict(model.named_modules())
        scores = {}
        for name in adapter.activation_points(model):
            layer = modules[name]
            width = getattr(layer, "out_channels", getattr(layer, "out_features", None))
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(name.encode()))
            scores[name] = torch.rand(int(width), generator=generator, dtype=torch.float64)
        return scores
