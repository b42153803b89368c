"""Small real Faster R-CNN models and batches for the R-CNN tests (CPU, tiny inputs)."""

from __future__ import annotations

import torch
from torch import nn

from detprune.adapters.rcnn import RcnnAdapter
from detprune.data.batch import Batch, Letterbox
from detprune.data.types import Sample

SMALL = "fasterrcnn_mobilenet_v3_large_320_fpn"
CLASSES = ["car", "pedestrian", "cyclist"]


def shrink_for_cpu(model: nn.Module, proposals: int = 48) -> nn.Module:
    """Fewer proposals and sampled RoIs: the same computation, small enough for 2 shared cores."""
    model.rpn._pre_nms_top_n = {"training": 4 * proposals, "testing": 4 * proposals}
    model.rpn._post_nms_top_n = {"training": 2 * proposals, "testing": proposals}
    model.roi_heads.fg_bg_sampler.batch_size_per_image = proposals
    model.rpn.fg_bg_sampler.batch_size_per_image = 2 * proposals
    return model


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial statistics and affine terms in every norm, so that dropping a channel shows."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
                n = m.running_mean.shape[0]
                m.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                m.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(n, generator=generator) * 0.1)
    return model


def small_model(arch: str = SMALL, seed: int = 0) -> nn.Module:
    model = RcnnAdapter().load(arch, class_names=CLASSES, init_seed=seed)
    return shrink_for_cpu(model).eval()


def make_batch(height: int = 96, width: int = 160, seed: int = 0, images: int = 2) -> Batch:
    """Two (or the first) letterboxed images (scale 0.5, 8 px of top padding) with boxes; the
    second holds an ignore region."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.rand(2, 3, height, width, generator=generator)
    boxes = [
        torch.tensor([[10.0, 20.0, 60.0, 80.0], [90.0, 30.0, 130.0, 60.0]]),
        torch.tensor([[40.0, 30.0, 80.0, 70.0], [0.0, 8.0, 20.0, 30.0]]),
    ]
    labels = [torch.tensor([0, 1]), torch.tensor([2, -1])]
    ignore = [torch.tensor([False, False]), torch.tensor([False, True])]
    letterbox = Letterbox(scale=0.5, pad_x=0.0, pad_y=8.0)
    original = Sample("frame.png", width * 2, (height - 16) * 2)
    return Batch(
        pixels[:images], boxes[:images], labels[:images], ignore[:images], [letterbox] * images, [original] * images
    )


def assert_same(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> None:
    """Equal up to float rounding: the largest error within ``rel`` of the output's range.

    Deep random networks reach values in the tens; an elementwise relative test would judge
    rounding noise on values near zero.
    """
    assert actual.shape == expected.shape
    scale = float(expected.abs().max()) or 1.0
    error = float((actual - expected).abs().max()) if expected.numel() else 0.0
    assert error <= rel * scale + 1e-7, f"max error {error:.3g} against output range {scale:.3g}"


def activation_widths(adapter, model: nn.Module, images: torch.Tensor) -> dict[str, set[int]]:
    """Channel counts each activation point outputs during one dense forward pass."""
    from detprune.adapters.rcnn.coupling import dense_outputs

    widths: dict[str, set[int]] = {}
    handles = [
        point.register_forward_hook(lambda m, i, o, name=name: widths.setdefault(name, set()).add(o.shape[1]))
        for name, point in adapter.activation_points(model).items()
    ]
    try:
        with torch.no_grad():
            dense_outputs(model, images)
    finally:
        for h in handles:
            h.remove()
    return widths


def out_width(layer: nn.Module) -> int:
    return layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
