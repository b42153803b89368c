"""The proof that the surgery is exact, on every supported YOLO family and on toy networks.

Method: pick random coupled groups and random channels in them (seeded), make those channels
contribute exactly nothing (the producing convs' filters and every coupled BatchNorm's
scale, shift and running mean set to zero, so each such activation is SiLU(0) = 0 and every
consumer multiplies zeros), cut exactly those channels, and compare with the uncut model.
BatchNorm statistics are randomised first, so a cut that misaligns any norm, concat slice or
residual branch changes the outputs. Then the pruned model must train (loss, backward, one
optimiser step) and export to ONNX with ONNX Runtime agreeing with PyTorch.

ONNX parameter rule: the graph's initializers hold the parameters of the modules the export
forward calls, with every BatchNorm folded into the conv before it (its scale and shift
vanish; a bias-less conv gains a bias of its width). All parameters are perturbed first so no
two tensors are bit-identical (the exporter stores identical tensors once).
"""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch
from torch import nn

from detprune.adapters.yolo import YoloAdapter
from detprune.criteria.magnitude import following_batchnorms
from detprune.data.batch import Batch, Letterbox
from detprune.pruning import prune_model
from detprune.pruning.groups import enumerate_groups
from detprune.pruning.pruner import apply_plan, conv_channels

from pruning_toys import (  # noqa: F401 (one_thread: an autouse fixture)
    ResidualConcatNet,
    SharedConvNet,
    SplitNet,
    ToyAdapter,
    assert_same_outputs,
    one_thread,
    random_plan,
    randomise_norms,
    silence,
    tensors,
)

FAMILIES = ["yolov5n.yaml", "yolov8n.yaml", "yolo11n.yaml", "yolo26n.yaml"]
IMGSZ = 128


def _batch() -> Batch:
    images = torch.rand(2, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(3))
    boxes = [
        torch.tensor([[10.0, 20.0, 60.0, 90.0], [70.0, 30.0, 120.0, 100.0]]),
        torch.tensor([[30.0, 40.0, 50.0, 70.0]]),
    ]
    labels = [torch.tensor([0, 2]), torch.tensor([1])]
    return Batch(
        images,
        boxes,
        labels,
        [torch.zeros(len(c), dtype=torch.bool) for c in labels],
        [Letterbox(1.0, 0.0, 0.0)] * 2,
        [],
    )


def _silence_and_cut(adapter, model, seed: int = 0):
    """Zero a random plan's channels, keep a copy, cut the plan; return (reference, plan, removals)."""
    model.eval()
    randomise_norms(model, seed)
    example = adapter.example_inputs(model, IMGSZ)
    coupled = enumerate_groups(model, example, adapter.protected_layers(model))
    plan = random_plan(coupled, seed)
    assert plan, "the random plan should cut something"
    silence(coupled, plan)
    reference = copy.deepcopy(model)
    removals = apply_plan(coupled, plan)
    return reference, example, plan, removals


def _outputs(model, example, end2end: bool):
    model.eval()
    with torch.no_grad():
        out = model(example)
    # an end-to-end head's first output is a top-k selection: compare the raw predictions it selects from
    return out[1] if end2end and isinstance(out, tuple) else out


def _parameters_reaching_outputs(module: nn.Module, example: torch.Tensor) -> set[int]:
    """ids of the parameters the outputs depend on (a branch computed but unused is dropped by export)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(True)
    try:
        with torch.enable_grad():
            out = module(example)
        outputs = [out] if isinstance(out, torch.Tensor) else [t for t in out if isinstance(t, torch.Tensor)]
        seen, stack, used = set(), [t.grad_fn for t in outputs if t.grad_fn is not None], set()
        while stack:
            fn = stack.pop()
            if fn is None or fn in seen:
                continue
            seen.add(fn)
            if hasattr(fn, "variable"):
                used.add(id(fn.variable))
            stack.extend(next_fn for next_fn, _ in fn.next_functions)
        return used
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _onnx_parameter_rule(module: nn.Module, example: torch.Tensor) -> int:
    """Parameters the outputs depend on, each BatchNorm folded into the conv before it."""
    used = _parameters_reaching_outputs(module, example)
    total = sum(p.numel() for p in module.parameters() if id(p) in used)
    convs = {name: m for name, m in module.named_modules() if isinstance(m, nn.Conv2d) and id(m.weight) in used}
    for name, bn in following_batchnorms(module, convs, example).items():
        if id(bn.weight) in used:
            total -= 2 * bn.num_features - (bn.num_features if convs[name].bias is None else 0)
    return total


def _export_and_compare(adapter, model) -> None:
    import onnx
    import onnxruntime as ort

    exported = adapter.export_module(model)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in exported.parameters():
            p.add_(1e-3 * torch.randn(p.shape, generator=generator))
    example = adapter.example_inputs(exported, IMGSZ)
    with torch.no_grad():
        expected = exported(example)
    buffer = io.BytesIO()
    torch.onnx.export(exported, (example,), buffer, opset_version=17, dynamo=False, input_names=["images"])
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(proto)
    stored = sum(int(np.prod(init.dims)) for init in proto.graph.initializer)
    assert stored == _onnx_parameter_rule(exported, example)
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": example.numpy()})
    expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
    assert len(got) == len(expected)
    for a, b in zip(expected, got):
        scale = max(1.0, float(a.abs().max()))
        assert np.abs(a.numpy() - b).max() <= 1e-4 * scale


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("spec", FAMILIES)
def test_yolo_cut_is_exact_trains_and_exports(spec):
    adapter = YoloAdapter()
    model = adapter.prepare_for_pruning(adapter.load(spec))
    end2end = bool(getattr(model.model[-1], "end2end", False))
    params_before = sum(p.numel() for p in model.parameters())
    widths_before = conv_channels(model)
    reference, example, plan, removals = _silence_and_cut(adapter, model)

    # exactly the planned channels went, from the layers the groups name, and nothing else
    widths_after = conv_channels(model)
    cut = {name: len(ch) for r in removals for name, ch in r.layers.items()}
    assert {n: widths_before[n] - widths_after[n] for n in widths_before if widths_before[n] != widths_after[n]} == cut
    assert sum(len(p) for p in plan.values()) == sum(len(r.channels) for r in removals)
    assert sum(p.numel() for p in model.parameters()) < params_before
    assert_same_outputs(_outputs(reference, example, end2end), _outputs(model, example, end2end))

    # the pruned model trains: finite loss, gradients on every trainable tensor, weights move
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.SGD(trainable, lr=0.01)
    loss = adapter.detection_loss(model, _batch())
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)
    snapshot = [p.detach().clone() for p in trainable]
    optimiser.step()
    assert any(not torch.equal(a, p) for a, p in zip(snapshot, trainable))

    _export_and_compare(adapter, model)


@pytest.mark.parametrize("net", [ResidualConcatNet, SplitNet, SharedConvNet])
def test_toy_cut_is_exact(net):
    torch.manual_seed(0)
    adapter = ToyAdapter(("head",))
    model = net()
    reference, example, plan, _ = _silence_and_cut(adapter, model, seed=1)
    assert_same_outputs(reference(example), model(example))
    # and through prune_model: the cost model's prediction is what the counter measures
    fresh = net()
    widths = {n: m.out_channels for n, m in adapter.activation_points(fresh).items()}
    result = prune_model(
        adapter, fresh, kept={n: range(0, w, 2) for n, w in widths.items()}, round_to=1, min_channels=1
    )
    assert result.predicted == result.after and result.after.params < result.before.params


def test_cutting_channels_that_still_contribute_changes_the_outputs():
    """The comparison above is sensitive: the same cut without silencing first must show."""
    torch.manual_seed(0)
    adapter = ToyAdapter(("head",))
    model = ResidualConcatNet().eval()
    randomise_norms(model, 1)
    example = adapter.example_inputs(model)
    coupled = enumerate_groups(model, example, adapter.protected_layers(model))
    reference = copy.deepcopy(model)
    apply_plan(coupled, random_plan(coupled, 1))
    with torch.no_grad():
        a, b = tensors(reference(example))[0], tensors(model(example))[0]
    assert a.shape == b.shape and (a - b).abs().max() > 1e-3


def test_resnet18_cut_is_exact():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    adapter = ToyAdapter(("fc",), imgsz=64)
    model = torchvision.models.resnet18(weights=None)
    reference, example, plan, removals = _silence_and_cut(adapter, model, seed=2)
    with torch.no_grad():
        assert_same_outputs(reference(example), model(example))
    assert model.fc.out_features == 1000


def test_ratio_zero_changes_nothing():
    adapter = YoloAdapter()
    model = adapter.prepare_for_pruning(adapter.load("yolov5n.yaml"))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    scores = {
        name: torch.rand(m.out_channels, dtype=torch.float64)
        for name, m in adapter.activation_points(model).items()
        for m in [model.get_submodule(name)]
    }
    result = prune_model(adapter, model, scores, ratio=0.0, imgsz=IMGSZ)
    assert result.removed == [] and result.after == result.before
    after = model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(state[k], after[k]) for k in state)
