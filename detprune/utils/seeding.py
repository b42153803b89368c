"""Fresh layers initialised the same way in every process.

A model built from a yaml, or a head re-initialised for a dataset's classes, draws its weights
from torch's global generator. Unseeded, two runs of one command start from different weights
(and train differently from the first batch), so every such initialisation runs under a seed,
on a forked generator: the caller's random stream is left where it was.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

INIT_SEED = 0  # the default seed of fresh weights


@contextmanager
def seeded_init(seed: int = INIT_SEED) -> Iterator[None]:
    """Run the block with torch's CPU generator seeded; restore the caller's generator afterwards.

    Layers are built on the CPU and moved afterwards, so the CUDA generators are not forked.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
