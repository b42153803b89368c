"""A small ONNX-exportable detector and what the machine offers, for the latency and engine tests."""

from __future__ import annotations

import importlib

import torch
from torch import nn


def _importable(name: str) -> bool:
    """Whether ``name`` really imports (bindings whose libraries fail to load count as absent)."""
    try:
        importlib.import_module(name)
    except Exception:
        return False
    return True


HAS_TENSORRT = _importable("tensorrt")


def small_detector() -> nn.Module:
    """Conv, BatchNorm, SiLU, a residual add, an upsample and a concat: the ops of a YOLO neck."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.SiLU())
            self.down = nn.Sequential(nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.SiLU())
            self.block = nn.Sequential(nn.Conv2d(32, 32, 3, 1, 1), nn.SiLU())
            self.up = nn.Upsample(scale_factor=2)
            self.head = nn.Conv2d(48, 8, 1)

        def forward(self, x):
            a = self.stem(x)
            b = self.down(a)
            b = b + self.block(b)
            return self.head(torch.cat([a, self.up(b)], 1)).sigmoid()

    torch.manual_seed(0)
    return Net().eval()
