"""Exact rewrites of ultralytics blocks whose channel coupling a dependency graph cannot trace.

C2f, C3k2, C2PSA and PSA run one ``cv1`` convolution and cut its output in two with
``chunk``/``split``; each half then feeds a different path. A dependency graph sees one
convolution whose output channels go to two places through an index operation, and channel
pruning either fails or removes matching channels from both halves. Two convolutions, one per
half, with the same weights and BatchNorm statistics, compute the same numbers and give each
half its own prunable output.

The rewritten blocks are subclasses of the originals (so ``isinstance`` checks inside
ultralytics, e.g. the exporter's, still see a C2f) and live here at module level, so a pickled
checkpoint that holds them reloads wherever detprune is installed.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from ultralytics.nn.modules.block import PSA, C2f, C2fCIB, C2fPSA, C2PSA, C3k2
from ultralytics.nn.modules.conv import Conv
from ultralytics.nn.modules.head import Detect


def _slice_conv(conv: nn.Conv2d, rows: slice) -> nn.Conv2d:
    """A Conv2d computing output channels ``rows`` of ``conv`` (dense convs only)."""
    weight = conv.weight[rows]
    out = nn.Conv2d(
        conv.in_channels,
        weight.shape[0],
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    ).to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        out.weight.copy_(weight)
        if conv.bias is not None:
            out.bias.copy_(conv.bias[rows])
    out.weight.requires_grad_(conv.weight.requires_grad)
    if conv.bias is not None:
        out.bias.requires_grad_(conv.bias.requires_grad)
    return out


def _slice_bn(bn: nn.BatchNorm2d, rows: slice) -> nn.BatchNorm2d:
    """A BatchNorm2d over channels ``rows`` of ``bn``: statistics, eps and momentum kept."""
    ref = bn.weight if bn.affine else bn.running_mean
    num = ref[rows].shape[0]
    out = nn.BatchNorm2d(
        num, eps=bn.eps, momentum=bn.momentum, affine=bn.affine, track_running_stats=bn.track_running_stats
    )
    out = out.to(device=ref.device, dtype=ref.dtype)
    with torch.no_grad():
        if bn.affine:
            out.weight.copy_(bn.weight[rows])
            out.bias.copy_(bn.bias[rows])
            out.weight.requires_grad_(bn.weight.requires_grad)
            out.bias.requires_grad_(bn.bias.requires_grad)
        if bn.track_running_stats:
            out.running_mean.copy_(bn.running_mean[rows])
            out.running_var.copy_(bn.running_var[rows])
            out.num_batches_tracked.copy_(bn.num_batches_tracked)
    out.train(bn.training)
    return out


def _shallow_copy(module: nn.Module, cls: type | None = None) -> nn.Module:
    """A new module object with the same attributes; its own (empty) parameter/buffer/child dicts.

    Dict attributes (hooks, ...) are copied so the copy never mutates the original's.
    """
    new = (cls or type(module)).__new__(cls or type(module))
    new.__dict__.update({k: (v.copy() if isinstance(v, dict) else v) for k, v in module.__dict__.items()})
    new._parameters, new._buffers, new._modules = OrderedDict(), OrderedDict(), OrderedDict()
    return new


def split_conv(conv: Conv, sizes: tuple[int, int]) -> tuple[Conv, Conv]:
    """Two ultralytics ``Conv`` blocks computing the first and second ``sizes`` output channels.

    Works on fused blocks too (no ``bn``, bias in the conv). The activation module is shared,
    as ultralytics itself shares its default SiLU.
    """
    if conv.conv.groups != 1:
        raise ValueError("only dense convolutions can be split by output channel")
    parts = []
    start = 0
    for size in sizes:
        rows = slice(start, start + size)
        start += size
        part = _shallow_copy(conv)  # keeps the class and a fused block's forward override
        part.conv = _slice_conv(conv.conv, rows)
        if hasattr(conv, "bn"):
            part.bn = _slice_bn(conv.bn, rows)
        part.act = conv.act
        parts.append(part)
    if start != conv.conv.out_channels:
        raise ValueError(f"split sizes {sizes} do not cover {conv.conv.out_channels} channels")
    return parts[0], parts[1]


class _SplitInput:
    """Shared construction: replace ``cv1`` by ``cv1_a`` and ``cv1_b`` in a copy of the block."""

    @classmethod
    def from_block(cls, block: nn.Module) -> nn.Module:
        new = _shallow_copy(block, cls)
        new._parameters, new._buffers = OrderedDict(block._parameters), OrderedDict(block._buffers)
        half = block.cv1.conv.out_channels // 2
        first, second = split_conv(block.cv1, (half, half))
        modules = OrderedDict()
        for name, child in block._modules.items():
            if name == "cv1":
                modules["cv1_a"] = first
                modules["cv1_b"] = second
            else:
                modules[name] = child
        new._modules = modules
        return new


class _SplitC2fForward(_SplitInput):
    """C2f data flow with the two halves computed by separate convolutions."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1_a(x), self.cv1_b(x)]
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))

    def forward_split(self, x: torch.Tensor) -> torch.Tensor:
        # the exporter swaps C2f.forward for forward_split; both must mean the same here
        return self.forward(x)


class SplitC2f(_SplitC2fForward, C2f):
    """C2f with ``cv1`` split into ``cv1_a`` / ``cv1_b``."""


class SplitC3k2(_SplitC2fForward, C3k2):
    """C3k2 (YOLO11, YOLO26; Bottleneck, C3k or attention inner blocks) with ``cv1`` split."""


class SplitC2fCIB(_SplitC2fForward, C2fCIB):
    """C2fCIB (YOLOv10) with ``cv1`` split."""


class SplitC2fPSA(_SplitC2fForward, C2fPSA):
    """C2fPSA with ``cv1`` split."""


class SplitC2PSA(_SplitInput, C2PSA):
    """C2PSA with ``cv1`` split: ``cv1_a`` bypasses the attention, ``cv1_b`` enters it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv2(torch.cat((self.cv1_a(x), self.m(self.cv1_b(x))), 1))


class SplitPSA(_SplitInput, PSA):
    """PSA (YOLOv10) with ``cv1`` split."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.cv1_b(x)
        b = b + self.attn(b)
        b = b + self.ffn(b)
        return self.cv2(torch.cat((self.cv1_a(x), b), 1))


# exact type -> rewritten type; exact types so that a subclass with its own forward is never
# silently given this one
REWRITES: dict[type, type] = {
    C2f: SplitC2f,
    C3k2: SplitC3k2,
    C2fCIB: SplitC2fCIB,
    C2fPSA: SplitC2fPSA,
    C2PSA: SplitC2PSA,
    PSA: SplitPSA,
}
SPLIT_TYPES: tuple[type, ...] = tuple(REWRITES.values())


def split_blocks(model: nn.Module) -> int:
    """Replace every splitting block of ``model`` in place; returns how many were rewritten."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            target = REWRITES.get(type(child)) if child is not None else None
            if target is not None:
                parent._modules[name] = target.from_block(child)
                count += 1
    return count


def reset_head_caches(model: nn.Module) -> None:
    """Drop caches computed from earlier shapes so the next forward rebuilds them.

    Detect caches anchors per input shape; the model caches its loss criterion (which holds
    the device and class count of when it was built).
    """
    for module in model.modules():
        if isinstance(module, Detect):
            module.shape = None
            module.anchors = torch.empty(0)
            module.strides = torch.empty(0)
    if getattr(model, "criterion", None) is not None:
        model.criterion = None
