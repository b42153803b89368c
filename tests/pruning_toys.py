"""Small real networks, a minimal adapter and shared checks for the pruning tests.

The adapter serves classification and toy nets, which have no detection objective: only the
methods the pruner uses (example inputs, protected layers, activation points) are real.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from detprune.adapters.base import DetectorAdapter
from detprune.pruning import prune_model
from detprune.pruning.groups import enumerate_groups
from detprune.pruning.pruner import apply_plan, trace_forward


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread while a module's tests run: on a few shared cores, two spinning
    OpenMP threads run many times slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class ToyAdapter(DetectorAdapter):
    """Prunes every conv but those named in ``protected``."""

    family = "toy"

    def __init__(self, protected: tuple[str, ...] = (), imgsz: int = 32):
        self.protected = protected
        self.imgsz = imgsz

    @classmethod
    def handles(cls, spec) -> bool:
        return False

    def load(self, spec, *, weights=None, class_names=None):
        raise NotImplementedError("toy networks are built directly")

    def class_names(self, model):
        return []

    def prepare_for_pruning(self, model):
        return model

    def example_inputs(self, model, imgsz=None, batch_size: int = 1):
        side = self.imgsz if imgsz is None or isinstance(imgsz, (tuple, list)) else min(int(imgsz), 64)
        return torch.rand(batch_size, 3, side, side, generator=torch.Generator().manual_seed(0))

    def protected_layers(self, model):
        return [model.get_submodule(n) for n in self.protected]

    def activation_points(self, model):
        skip = {id(m) for n in self.protected for m in model.get_submodule(n).modules()}
        return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in skip}

    def detection_loss(self, model, batch):
        raise NotImplementedError

    def detection_utility(self, model, batch):
        raise NotImplementedError

    def predict(self, model, batch, **kw):
        raise NotImplementedError

    def finetune(self, model, data, **kw):
        raise NotImplementedError

    def save(self, model, path, meta=None):
        torch.save(model, path)
        return path

    def load_checkpoint(self, path):
        return torch.load(path, weights_only=False)


def cbr(c1: int, c2: int, k: int = 3, s: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c1, c2, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(c2), nn.ReLU())


class ResidualConcatNet(nn.Module):
    """Stem, two residual blocks on one width, a concat of two branches, a depthwise conv, a head."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 32, s=2)
        self.block1 = cbr(32, 32)
        self.block2 = cbr(32, 32)
        self.left = cbr(32, 24)
        self.right = cbr(32, 40, k=1)
        self.dw = cbr(64, 64, groups=64)
        self.fuse = cbr(64, 48, k=1)
        self.pool = nn.MaxPool2d(2)
        self.up = nn.Upsample(scale_factor=2)
        self.head = nn.Conv2d(48, 5, 1)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.block1(x)
        x = x + self.block2(x)
        y = torch.cat([self.left(x), self.right(x)], 1)
        y = self.up(self.pool(self.dw(y)))
        return self.head(self.fuse(y))


class SplitNet(nn.Module):
    """A conv whose output is sliced in two: the first part is added to another conv's output,
    the second feeds a conv alone, so its channels fall into two different groups."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 16)
        self.b = cbr(16, 16)
        self.c = cbr(24, 24)
        self.a = cbr(16, 40, k=1)
        self.head = nn.Conv2d(40, 3, 1)

    def forward(self, x):
        x = self.stem(x)
        y = self.a(x)
        cut = self.b[0].out_channels  # read at run time: slices follow the pruned widths
        first, second = y[:, :cut], y[:, cut:]
        return self.head(torch.cat([first + self.b(x), self.c(second)], 1))


class SharedConvNet(nn.Module):
    """One conv block applied to two feature maps (as a detection head is to pyramid levels):
    the two producers become one group through the shared block's input channels."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 16)
        self.a = cbr(16, 32)
        self.b = cbr(16, 32, s=2)
        self.shared = cbr(32, 24)
        self.head = nn.Conv2d(24, 4, 1)

    def forward(self, x):
        x = self.stem(x)
        return [self.head(self.shared(self.a(x))), self.head(self.shared(self.b(x)))]


def randomise_norms(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics, so a misaligned cut shows up in the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.2 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))


def random_scores(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        n: torch.rand(m.out_channels, generator=g) for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)
    }


def random_plan(coupled, seed: int = 0, fraction_of_groups: float = 0.6) -> dict[int, np.ndarray]:
    """Random positions of random prunable groups; every group keeps at least half its channels."""
    rng = np.random.default_rng(seed)
    plan = {}
    for g in coupled.prunable_groups():
        if rng.random() > fraction_of_groups:
            continue
        candidates = g.prunable
        n = int(rng.integers(1, max(2, min(len(candidates), g.size // 2) + 1)))
        plan[g.index] = np.sort(rng.choice(candidates, size=min(n, len(candidates)), replace=False))
    return plan


def silence(coupled, plan) -> None:
    """Make the planned channels contribute exactly nothing: the producing convs' filters and
    biases and every coupled norm's scale, shift and running mean become zero, so each such
    activation is 0 (ReLU(0) = SiLU(0) = 0) and the consumers multiply zeros."""
    with torch.no_grad():
        for g in coupled.groups:
            positions = plan.get(g.index)
            if positions is None:
                continue
            for t in g.touches:
                module = t.node.module
                channels = torch.as_tensor(np.unique(t.channels[np.isin(t.positions, positions)]))
                if t.side != "out" or not len(channels) or not isinstance(module, nn.Module):
                    continue
                if isinstance(module, nn.modules.conv._ConvNd | nn.Linear):
                    module.weight[channels] = 0
                    if module.bias is not None:
                        module.bias[channels] = 0
                elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.weight[channels] = 0
                    module.bias[channels] = 0
                    module.running_mean[channels] = 0


def tensors(output, skip=("feats",)) -> list[torch.Tensor]:
    """Every tensor of a nested output, in order, leaving out entries named in ``skip``."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        return [t for k, v in output.items() if k not in skip for t in tensors(v, skip)]
    if isinstance(output, (list, tuple)):
        return [t for v in output for t in tensors(v, skip)]
    return []


def assert_same_outputs(reference, pruned, rtol: float = 1e-4) -> None:
    ref, out = [t.detach() for t in tensors(reference)], [t.detach() for t in tensors(pruned)]
    assert len(ref) == len(out) and ref
    for a, b in zip(ref, out):
        assert a.shape == b.shape
        scale = max(1.0, float(a.abs().max()))
        err = float((a - b).abs().max())
        assert err <= rtol * scale, f"max abs difference {err:.3g} at output scale {scale:.3g}"


def clone(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)


def cut_exactly_what_cost_removes(adapter, model, scores, imgsz, outputs, flops: float = 0.5, groups: int = 4,
                                  **options):
    """Zero the channels a cost allocation (or ``options``') removes, cut exactly those, compare with the uncut
    model."""
    options = options or {"allocation": "cost"}
    removed = prune_model(adapter, copy.deepcopy(model), scores, target_flops=flops, imgsz=imgsz, **options).removed
    example = adapter.example_inputs(model, imgsz)
    coupled = enumerate_groups(model, example, adapter.protected_layers(model), trace_forward(adapter, model))
    by_root = {g.root: g for g in coupled.groups}
    plan = {}
    for r in removed:
        group = by_root[r.root]
        position = {int(c): p for p, c in enumerate(group.channels.tolist())}
        plan[group.index] = np.array(sorted(position[c] for c in r.channels), dtype=np.int64)
    assert len(plan) >= groups
    silence(coupled, plan)
    reference = copy.deepcopy(model)
    apply_plan(coupled, plan)
    with torch.no_grad():
        return outputs(reference, example), outputs(model, example, reference)
