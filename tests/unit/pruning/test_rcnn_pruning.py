"""Pruning Faster R-CNN is exact: zeroed coupled channels removed leave every output unchanged.

For each coupled group (FPN output width across levels, RPN head and fc6; FPN laterals;
MobileNetV3 expanded widths with squeeze-excitation; residual streams; box head widths) the
producing convs and norms are zeroed so the channels' activations are exactly 0, the
reference outputs are taken, the group is cut through Torch-Pruning's dependency graph
built on the dense path, and RPN head outputs plus box head logits / regression for the
same fixed proposals must match. The pruned model then takes a training step.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch_pruning as tp
from torch import nn

from detprune.adapters.rcnn import checkpoint as ckpt
from detprune.adapters.rcnn import RcnnAdapter
from detprune.adapters.rcnn.coupling import check_fpn_coupling, dense_outputs, fpn_width_layers
from detprune.errors import UnsupportedError
from rcnn_models import (
    CLASSES, activation_widths, assert_same, make_batch, out_width, randomize_norms, shrink_for_cpu, small_model,
)

ADAPTER = RcnnAdapter()


def build_graph(model: nn.Module, images: torch.Tensor) -> tp.DependencyGraph:
    return tp.DependencyGraph().build_dependency(
        model, images, verbose=False, **ADAPTER.dependency_graph_options(model)
    )


def group_of(graph, model: nn.Module, root: str, channels: list[int]):
    layer = model.get_submodule(root)
    return graph.get_pruning_group(layer, graph.get_pruner_of_module(layer).prune_out_channels, channels)


def zero_group(graph, group) -> None:
    """Make the group's channels exactly 0 where they are produced: conv / linear rows and norm affine terms."""
    with torch.no_grad():
        for item in group.items:
            module = item.dep.target.module
            if not graph.is_out_channel_pruning_fn(item.dep.handler):
                continue
            idxs = torch.as_tensor(list(item.idxs), dtype=torch.long)
            if isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
                module.weight[idxs] = 0
                if module.bias is not None:
                    module.bias[idxs] = 0


def prune_exactly(model: nn.Module, images: torch.Tensor, cuts: dict[str, list[int]]) -> nn.Module:
    """Zero every group in ``cuts`` (root conv -> its channels), then cut them; assert outputs unchanged."""
    graph = build_graph(model, images)
    for root, channels in cuts.items():
        zero_group(graph, group_of(graph, model, root, channels))
    with torch.no_grad():
        reference = dense_outputs(model, images)
    widths = {root: model.get_submodule(root).weight.shape[0] for root in cuts}
    for root, channels in cuts.items():
        group = group_of(graph, model, root, channels)
        assert graph.check_pruning_group(group), root
        group.prune()
    for root, channels in cuts.items():
        assert model.get_submodule(root).weight.shape[0] == widths[root] - len(channels), root
    with torch.no_grad():
        pruned = dense_outputs(model, images, reference.proposals)
    for before, after in zip(reference.tensors(), pruned.tensors()):
        assert_same(after, before)
    return model


def train_step(model: nn.Module, batch) -> None:
    """One SGD step: finite loss, gradients reach the pruned layers, the weights move."""
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    fc6 = next(m for m in model.roi_heads.box_head.modules() if isinstance(m, (nn.Linear,)))
    before = fc6.weight.detach().clone()
    loss = ADAPTER.detection_loss(model, batch)
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    model.eval()
    assert not torch.equal(fc6.weight.detach(), before)


def _se_block(model: nn.Module) -> str:
    """The first inverted residual with squeeze-excitation and a residual add."""
    from torchvision.ops.misc import SqueezeExcitation

    for name, module in model.backbone.body.named_modules():
        if getattr(module, "use_res_connect", False) and any(
            isinstance(m, SqueezeExcitation) for m in module.modules()
        ):
            return f"backbone.body.{name}"
    raise AssertionError("no residual SE block")


def test_fpn_width_is_one_group_with_rpn_head_and_fc6_columns():
    model = ADAPTER.prepare_for_pruning(small_model())
    graph = build_graph(model, ADAPTER.example_inputs(model, (64, 96)))
    check_fpn_coupling(graph, model)  # every level, the RPN conv input, fc6 columns 0..48 for channel 0
    group = group_of(graph, model, "backbone.fpn.layer_blocks.0.0", [5])
    fc6 = model.roi_heads.box_head.fc6
    columns = [list(i.idxs) for i in group.items if i.dep.target.module is fc6]
    assert columns == [list(range(5 * 49, 6 * 49))]
    # traced the way torchvision runs it (detached proposals), the RPN head is missing from the group
    plain = tp.DependencyGraph().build_dependency(model, [[ADAPTER.example_inputs(model, (64, 96))[0]]], verbose=False)
    with pytest.raises(UnsupportedError, match="rpn.head.conv"):
        check_fpn_coupling(plain, model)
    assert any("fc6" in note and "columns" in note for note in ADAPTER.coupling_notes(model))


def test_mobilenet_groups_prune_exactly_then_train():
    model = ADAPTER.prepare_for_pruning(randomize_norms(small_model()))
    block = _se_block(model)
    se = next(n for n, m in model.named_modules() if n.startswith(block) and type(m).__name__ == "SqueezeExcitation")
    cuts = {
        "backbone.fpn.layer_blocks.0.0": [0, 7, 100, 255],  # FPN output width: every level, RPN head, fc6 columns
        "backbone.fpn.inner_blocks.0.0": [3, 200],  # laterals, summed top-down
        f"{block}.block.0.0": [1, 9],  # expanded width: expand, depthwise, SE fc1 in / fc2 out, project in
        f"{se}.fc1": [0, 2],  # SE squeeze width
        f"{block}.block.3.0": [4],  # the residual stream through the block
        "rpn.head.conv.0.0": [10, 11],
        "roi_heads.box_head.fc6": [0, 500],
        "roi_heads.box_head.fc7": [1023],  # read by the protected predictor: its inputs shrink
    }
    images = ADAPTER.example_inputs(model, (96, 128))
    prune_exactly(model, images, cuts)
    assert model.backbone.fpn.layer_blocks[1][0].out_channels == 252
    assert model.rpn.head.conv[0][0].in_channels == 252 and model.roi_heads.box_head.fc6.in_features == 252 * 49
    assert model.roi_heads.box_predictor.cls_score.in_features == 1023
    assert model.roi_heads.box_predictor.cls_score.out_features == len(CLASSES) + 1
    train_step(model, make_batch(images=1))


def test_protected_layers_keep_their_outputs():
    model = ADAPTER.prepare_for_pruning(small_model())
    protected = ADAPTER.protected_layers(model)
    names = {id(m): n for n, m in model.named_modules()}
    assert sorted(names[id(m)] for m in protected) == [
        "roi_heads.box_predictor.bbox_pred",
        "roi_heads.box_predictor.cls_score",
        "rpn.head.bbox_pred",
        "rpn.head.cls_logits",
    ]
    producers, readers = fpn_width_layers(model)
    assert (
        len(producers) == 2 and readers[0] is model.rpn.head.conv[0][0] and readers[1] is model.roi_heads.box_head.fc6
    )


@pytest.mark.parametrize("arch", ["fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2"])
def test_resnet50_fpn_groups_prune_exactly(arch):
    torch.manual_seed(0)
    model = shrink_for_cpu(ckpt.build(arch, len(CLASSES) + 1, pretrained_layout=True), proposals=16).eval()
    randomize_norms(model)
    frozen = copy.deepcopy(model)
    ADAPTER.prepare_for_pruning(model)
    images = ADAPTER.example_inputs(model, (64, 64))
    with torch.no_grad():  # FrozenBatchNorm2d -> BatchNorm2d changed nothing
        a, b = dense_outputs(frozen, images), dense_outputs(model, images)
    for x, y in zip(a.tensors(), b.tensors()):
        assert_same(y, x)
    widths = activation_widths(ADAPTER, model, images)  # ResNet points: conv -> its norm, one channel each
    assert widths == {name: {out_width(model.get_submodule(name))} for name in ADAPTER.activation_points(model)}
    box_first = next(n for n, m in model.roi_heads.box_head.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    cuts = {
        "backbone.fpn.layer_blocks.0.0": [2, 31],  # FPN output width
        "backbone.body.layer1.0.conv3": [0, 64, 255],  # layer1 residual stream: conv3s, downsample, FPN lateral input
        "backbone.body.layer2.1.conv2": [5],  # inside a bottleneck
        "backbone.body.conv1": [7],  # stem
        f"roi_heads.box_head.{box_first}": [3],
    }
    prune_exactly(model, images, cuts)
    assert model.backbone.body.layer2[0].downsample[0].in_channels == 253


def test_prune_model_cuts_the_fpn_width_exactly_and_reaches_a_ratio():
    from detprune.pruning.pruner import prune_model

    model = ADAPTER.prepare_for_pruning(randomize_norms(small_model(seed=2)))
    images = ADAPTER.example_inputs(model, (96, 128))
    graph = build_graph(model, images)
    gone = {"backbone.fpn.layer_blocks.0.0": list(range(8, 16)), "roi_heads.box_head.fc6": list(range(8))}
    for root, channels in gone.items():
        zero_group(graph, group_of(graph, model, root, channels))
    with torch.no_grad():
        reference = dense_outputs(model, images)
    kept = {
        root: [c for c in range(model.get_submodule(root).weight.shape[0]) if c not in channels]
        for root, channels in gone.items()
    }
    result = prune_model(ADAPTER, model, kept=kept, imgsz=(96, 128), round_to=8)
    assert model.backbone.fpn.layer_blocks[1][0].out_channels == 248 and model.rpn.head.conv[0][0].in_channels == 248
    assert model.roi_heads.box_head.fc6.in_features == 248 * 49 and model.roi_heads.box_head.fc6.out_features == 1016
    with torch.no_grad():
        pruned = dense_outputs(model, images, reference.proposals)
    for before, after in zip(reference.tensors(), pruned.tensors()):
        assert_same(after, before)
    # FLOPs are counted on the dense path (box head on the test-time proposals), and predicted exactly
    assert result.after.macs < result.before.macs and result.predicted == result.after

    scores = {}
    for name in ADAPTER.activation_points(model):
        weight = model.get_submodule(name).weight.detach()
        scores[name] = weight.abs().reshape(weight.shape[0], -1).sum(1).double()
    result = prune_model(ADAPTER, model, scores, ratio=0.5, imgsz=(96, 128))
    assert 0.45 <= result.achieved["ratio"] <= 0.55 and result.after.macs < 0.7 * result.before.macs
    train_step(model, make_batch(images=1))
    assert all(len(d.boxes) for d in ADAPTER.predict(model, make_batch(images=1), conf=0.0))
