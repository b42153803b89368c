"""The traceable dense path of a torchvision Faster R-CNN, and the channel couplings it exposes.

Torch-Pruning builds its dependency graph by following autograd from a model's outputs.
``GeneralizedRCNN`` in eval mode returns post-processed detections whose proposals were
decoded from *detached* RPN outputs, so a trace through ``model(images)`` never reaches the
RPN head: the FPN output width (shared by every pyramid level, the RPN head and the RoI box
head) would look free to prune from the FPN side alone, and the RPN head would crash.

:func:`dense_outputs` runs the part of the detector that carries channels, with nothing
detached and nothing data dependent::

    images -> normalise -> backbone (+ FPN) -> RPN head on every level
                                            -> RoIAlign on fixed proposals -> box head -> box predictor

Traced through it, Torch-Pruning puts into ONE group the output channels of every FPN
``layer_blocks`` conv, the input channels of the RPN head's first conv and the input of the
box head's first layer; for ``TwoMLPHead.fc6`` (input ``C x 7 x 7`` flattened) it maps FPN
channel ``c`` to columns ``c*49 .. c*49+48`` through its flatten index mapping. The lateral
``inner_blocks`` (summed top-down) form a second group, residual stages and MobileNetV3's
squeeze-excitation blocks their own. :func:`check_fpn_coupling` verifies the first of these on
a built graph, so a Torch-Pruning change that loses it fails loudly instead of producing a
model that crashes or silently mis-computes.

Costs (parameters, FLOPs) are counted on the same path with the model's test-time proposal
budget (``rpn.post_nms_top_n`` for testing, at most the anchors the image has): the box head
runs once per proposal, which is the per-image worst case the detector is configured for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from detprune.errors import UnsupportedError

PROPOSAL_SEED = 0


def normalize(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] normalised as the model's ``GeneralizedRCNNTransform`` does."""
    mean = torch.as_tensor(model.transform.image_mean, dtype=images.dtype, device=images.device)
    std = torch.as_tensor(model.transform.image_std, dtype=images.dtype, device=images.device)
    return (images - mean[:, None, None]) / std[:, None, None]


def fixed_proposals(
    height: int, width: int, count: int, *, seed: int = PROPOSAL_SEED, device=None, dtype=torch.float32
) -> torch.Tensor:
    """``count`` reproducible boxes (xyxy) inside the image, of every size from 8 px to the image.

    Sides are log-uniform so that RoIAlign's level mapper sends them to every FPN level.
    """
    # numpy, not a torch generator: the boxes are constants to tracers and exporters
    rng = np.random.default_rng(seed)
    count = max(int(count), 1)
    size = np.array([float(width), float(height)])
    side = 8.0 * np.exp(rng.uniform(0.0, 1.0, (count, 2)) * np.log(max(height, width) / 8.0))
    side = np.minimum(side, size)
    lo = np.clip(rng.uniform(0.0, 1.0, (count, 2)) * size - side / 2, 0.0, size - side)
    boxes = torch.from_numpy(np.concatenate([lo, lo + side], axis=1).astype(np.float32))
    return boxes.to(device=device, dtype=dtype)


def proposal_budget(model: nn.Module, anchors_per_level: Sequence[int]) -> int:
    """Proposals the RPN hands the box head at test time, at most: top-n per level, then post-NMS top-n."""
    rpn = model.rpn
    pre = int(rpn._pre_nms_top_n["testing"])
    post = int(rpn._post_nms_top_n["testing"])
    return max(1, min(post, sum(min(pre, n) for n in anchors_per_level)))


@dataclass
class DenseOutputs:
    """Everything the dense path computes: per-level RPN maps, per-proposal box head outputs."""

    objectness: list[torch.Tensor]
    rpn_deltas: list[torch.Tensor]
    class_logits: torch.Tensor
    box_regression: torch.Tensor
    proposals: list[torch.Tensor]

    def tensors(self) -> list[torch.Tensor]:
        return [*self.objectness, *self.rpn_deltas, self.class_logits, self.box_regression]


def dense_outputs(
    model: nn.Module, images: torch.Tensor, proposals: Sequence[torch.Tensor] | None = None
) -> DenseOutputs:
    """Run backbone, FPN, RPN head and box head (on fixed proposals) on a (B, 3, H, W) batch in [0, 1].

    The image is not resized: this is the network at the input's own size. ``proposals``
    (one (N, 4) tensor per image, input pixels) default to :func:`fixed_proposals` at the
    model's test-time budget.
    """
    if images.dim() != 4:
        raise UnsupportedError(f"the dense path takes a (B, 3, H, W) image batch, got shape {tuple(images.shape)}")
    batch, height, width = (int(images.shape[i]) for i in (0, 2, 3))  # constants when traced: a fixed size
    features = model.backbone(normalize(model, images))
    levels = list(features.values())
    objectness, rpn_deltas = model.rpn.head(levels)
    if proposals is None:
        per_level = [int(o.shape[1] * o.shape[2] * o.shape[3]) for o in objectness]
        boxes = fixed_proposals(
            height, width, proposal_budget(model, per_level), device=images.device, dtype=images.dtype
        )
        proposals = [boxes] * batch
    proposals = list(proposals)
    image_sizes = [(height, width)] * batch
    roi_heads = model.roi_heads
    box_features = roi_heads.box_head(roi_heads.box_roi_pool(features, proposals, image_sizes))
    class_logits, box_regression = roi_heads.box_predictor(box_features)
    return DenseOutputs(list(objectness), list(rpn_deltas), class_logits, box_regression, proposals)


def trace_forward(model: nn.Module, example_inputs) -> list[torch.Tensor]:
    """A Torch-Pruning ``forward_fn``: the dense path's outputs as a flat list of tensors."""
    images = example_inputs
    while isinstance(images, (tuple, list)):
        images = images[0]
    return dense_outputs(model, images).tensors()


class DenseRcnn(nn.Module):
    """The dense path as a module (one image batch in, plain tensors out), sharing ``model``'s layers.

    For FLOPs counters that call ``module(inputs)``, and for exporting the backbone-to-heads
    part alone. Outputs: objectness and RPN deltas per level, then class logits and box
    regression of the fixed proposals.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(dense_outputs(self.model, images).tensors())


def dependency_graph_options(model: nn.Module) -> dict:
    """Keyword arguments for ``DependencyGraph.build_dependency`` (and whatever else traces the model).

    ``forward_fn(model, example_inputs)`` replaces ``model(example_inputs)``: it returns the
    dense path's tensors, so the graph reaches the RPN head and the RoI box head.
    """
    return {"forward_fn": trace_forward}


# --- the FPN width ----------------------------------------------------------------------------


def first_layer(module: nn.Module) -> nn.Module:
    for sub in module.modules():
        if isinstance(sub, (nn.Conv2d, nn.Linear)):
            return sub
    raise UnsupportedError(f"{type(module).__name__}: no conv or linear layer inside")


def fpn_width_layers(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """(the FPN output convs, the layers that read the FPN width: RPN head conv, box head first layer)."""
    fpn = getattr(model.backbone, "fpn", None)
    if fpn is None:
        raise UnsupportedError(
            f"{type(model.backbone).__name__}: backbone without an FPN; detprune handles torchvision's *_fpn models"
        )
    producers = [first_layer(block) for block in fpn.layer_blocks]
    readers = [first_layer(model.rpn.head.conv), first_layer(model.roi_heads.box_head)]
    return producers, readers


def check_fpn_coupling(graph, model: nn.Module) -> None:
    """Raise unless ``graph`` couples every FPN output conv with the RPN head and the box head.

    ``graph`` is a Torch-Pruning ``DependencyGraph`` built on ``model``. The group of one
    channel of the first FPN output conv must prune that channel in every other FPN output
    conv and in both readers' inputs (49 columns of a ``fc6`` that flattens 7 x 7 RoIs).
    """
    producers, readers = fpn_width_layers(model)
    root = producers[0]
    if root not in graph.module2node:
        raise UnsupportedError(
            "the dependency graph does not contain the FPN; build it with dependency_graph_options(model)"
        )
    group = graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels, [0])
    outs: set[int] = set()
    ins: dict[int, list[int]] = {}
    for item in group.items:
        module, handler = item.dep.target.module, item.dep.handler
        if graph.is_out_channel_pruning_fn(handler):
            outs.add(id(module))
        elif graph.is_in_channel_pruning_fn(handler):
            ins[id(module)] = sorted(int(i) for i in item.idxs)
    missing = [m for m in producers if id(m) not in outs] + [m for m in readers if id(m) not in ins]
    if missing:
        names = {m: n for n, m in model.named_modules()}
        raise UnsupportedError(
            "Torch-Pruning did not couple the FPN output width with "
            + ", ".join(names.get(m, type(m).__name__) for m in missing)
            + "; pruning it would break the detector"
        )
    for reader in readers:
        if isinstance(reader, nn.Linear):
            width = producers[0].out_channels
            per_channel = reader.in_features // width
            if ins[id(reader)] != list(range(per_channel)):
                raise UnsupportedError(
                    f"Torch-Pruning maps FPN channel 0 to columns {ins[id(reader)][:4]}... of the box head's "
                    f"first linear layer, expected 0..{per_channel - 1}"
                )


def coupling_notes(model: nn.Module) -> list[str]:
    """What is tied to what in this model, in words, for reports."""
    producers, readers = fpn_width_layers(model)
    names = {m: n for n, m in model.named_modules()}
    width = producers[0].out_channels
    box_reader = readers[1]
    if isinstance(box_reader, nn.Linear):
        cells = box_reader.in_features // width
        box_note = f"{names[box_reader]} (columns c*{cells} .. c*{cells}+{cells - 1} for channel c)"
    else:
        box_note = f"{names[box_reader]} (input channels)"
    notes = [
        f"FPN output width ({width} channels) is one group: {', '.join(names[p] for p in producers)} "
        f"(every pyramid level and the max-pooled extra level), {names[readers[0]]} (input, shared across levels) "
        f"and {box_note}; traced through the dense path, not through the detached post-processing.",
        "FPN lateral convs (inner_blocks) form one group: their outputs are summed top-down.",
        "Protected: rpn.head.cls_logits and rpn.head.bbox_pred (anchors x 1 and anchors x 4 outputs), "
        "roi_heads.box_predictor.cls_score and .bbox_pred (classes + background, 4 x that); their inputs are prunable.",
    ]
    body = model.backbone.body
    if any(type(m).__name__ == "Bottleneck" for m in body.modules()):
        notes.append(
            "ResNet stages: the residual stream of each stage (conv3 of every bottleneck, the downsample conv, "
            "the next stage's inputs, the FPN lateral input) is one group; conv1/conv2 of a bottleneck are free."
        )
    if any(type(m).__name__ == "SqueezeExcitation" for m in body.modules()):
        notes.append(
            "MobileNetV3: the expanded width of an inverted residual ties the expand conv, the depthwise conv "
            "and the squeeze-excitation fc2 output / fc1 input; the SE squeeze width (fc1 out / fc2 in) is its "
            "own group; residual blocks share the stream width."
        )
    return notes
