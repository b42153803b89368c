"""Property tests: the surgery is exact on random coupled graphs and random keep-sets.

Hypothesis draws a small conv net (a stem, then a random sequence of plain convs, residual
adds, two-branch concats and depthwise convs, then a head) and, for every prunable coupled
group, a random set of positions to cut (at least one channel stays). The cut channels are
first made to contribute exactly nothing (their filters, biases and every coupled norm's
scale, shift and running mean zeroed, so each such activation is ReLU(0) = 0), a copy is kept,
exactly those channels are cut, and the outputs must match the copy's to float tolerance --
with randomised norm statistics, a cut that misaligns any norm, concat slice or residual
branch changes them. The widths must shrink by exactly the positions cut.

On the same random graphs, every registered allocation policy keeps each group at a width its
limits allow and removes more (never fewer) channels as its ``amount`` grows.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from detprune.pruning.groups import enumerate_groups
from detprune.pruning.pruner import apply_plan, conv_channels

from pruning_toys import ToyAdapter, assert_same_outputs, cbr, one_thread, randomise_norms, silence  # noqa: F401

WIDTHS = st.integers(min_value=2, max_value=12)
BLOCK = st.one_of(
    st.tuples(st.just("conv"), WIDTHS, st.just(0)),
    st.tuples(st.just("residual"), st.just(0), st.just(0)),
    st.tuples(st.just("concat"), WIDTHS, WIDTHS),
    st.tuples(st.just("dw"), st.just(0), st.just(0)),
)
SPEC = st.tuples(WIDTHS, st.lists(BLOCK, min_size=1, max_size=5))
PROPERTY = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class RandomNet(nn.Module):
    """A stem, the drawn blocks in order, a 1x1 head (the protected layer)."""

    def __init__(self, stem: int, blocks: list[tuple[str, int, int]]):
        super().__init__()
        self.stem = cbr(3, stem)
        self.kinds = [kind for kind, _, _ in blocks]
        self.blocks = nn.ModuleList()
        width = stem
        for kind, a, b in blocks:
            if kind == "conv":
                self.blocks.append(cbr(width, a))
                width = a
            elif kind == "residual":
                self.blocks.append(cbr(width, width))
            elif kind == "concat":
                self.blocks.append(nn.ModuleList([cbr(width, a, k=1), cbr(width, b)]))
                width = a + b
            else:
                self.blocks.append(cbr(width, width, groups=width))
        self.head = nn.Conv2d(width, 3, 1)

    def forward(self, x):
        x = self.stem(x)
        for kind, block in zip(self.kinds, self.blocks):
            if kind == "residual":
                x = x + block(x)
            elif kind == "concat":
                x = torch.cat([block[0](x), block[1](x)], 1)
            else:
                x = block(x)
        return self.head(x)


def _keep_sets(data, coupled) -> dict[int, np.ndarray]:
    """Per prunable group, a drawn set of positions to cut; at least one channel of each stays."""
    plan = {}
    for g in coupled.prunable_groups():
        candidates = sorted(int(p) for p in g.prunable)
        most = min(len(candidates), g.size - 1)
        if most < 1:
            continue
        cut = data.draw(st.lists(st.sampled_from(candidates), unique=True, max_size=most), label=f"group {g.index}")
        if cut:
            plan[g.index] = np.array(sorted(cut), dtype=np.int64)
    return plan


@PROPERTY
@given(spec=SPEC, data=st.data(), seed=st.integers(0, 2**16))
def test_cutting_silenced_channels_changes_no_output(spec, data, seed):
    stem, blocks = spec
    torch.manual_seed(seed)
    model = RandomNet(stem, blocks).eval()
    randomise_norms(model, seed)
    adapter = ToyAdapter(protected=("head",), imgsz=16)
    example = adapter.example_inputs(model, 16, batch_size=2)
    coupled = enumerate_groups(model, example, adapter.protected_layers(model))
    plan = _keep_sets(data, coupled)
    silence(coupled, plan)
    reference = copy.deepcopy(model)
    widths = conv_channels(model)

    apply_plan(coupled, plan)

    with torch.no_grad():
        assert_same_outputs(reference(example), model(example))
    after = conv_channels(model)
    lost: dict[str, int] = {}
    for g in coupled.groups:
        for member in g.members:
            cut = int(np.isin(member.positions, plan.get(g.index, ())).sum())
            lost[member.name] = lost.get(member.name, 0) + cut
    assert {n: widths[n] - after[n] for n in widths} == {n: lost.get(n, 0) for n in widths}
    assert after["head"] == widths["head"] == 3


@PROPERTY
@given(spec=SPEC, seed=st.integers(0, 2**16))
def test_an_empty_plan_changes_nothing(spec, seed):
    stem, blocks = spec
    torch.manual_seed(seed)
    model = RandomNet(stem, blocks).eval()
    randomise_norms(model, seed)
    adapter = ToyAdapter(protected=("head",), imgsz=16)
    example = adapter.example_inputs(model, 16)
    reference = copy.deepcopy(model)
    coupled = enumerate_groups(model, example, adapter.protected_layers(model))
    assert apply_plan(coupled, {}) == []
    assert conv_channels(model) == conv_channels(reference)
    with torch.no_grad():
        assert_same_outputs(reference(example), model(example), rtol=0)


@settings(PROPERTY, max_examples=20)
@given(spec=SPEC, data=st.data(), seed=st.integers(0, 2**16),
       limits=st.tuples(st.sampled_from([1, 2, 4]), st.integers(1, 3), st.sampled_from([0.5, 0.8, 0.95])))
def test_every_registered_allocation_keeps_its_limits_and_grows_with_the_amount(spec, data, seed, limits):
    """For each allocation policy: every group's width is one its limits allow, and a larger
    ``amount`` never removes fewer channels in total."""
    from detprune.pruning.allocation import Limits, group_scores, removal_orders
    from detprune.pruning.flops import CostModel, measure
    from detprune.pruning.policies import AllocationContext, allocation_names, get_allocation

    stem, blocks = spec
    torch.manual_seed(seed)
    model = RandomNet(stem, blocks).eval()
    adapter = ToyAdapter(protected=("head",), imgsz=16)
    example = adapter.example_inputs(model, 16)
    coupled = enumerate_groups(model, example, adapter.protected_layers(model))
    g = torch.Generator().manual_seed(seed)
    scores = {n: torch.rand(m.out_channels, generator=g) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    round_to, min_channels, max_ratio = limits
    bounds = Limits(round_to=round_to, min_channels=min_channels, max_ratio=max_ratio)
    amounts = sorted(data.draw(st.lists(st.floats(0, 1), min_size=2, max_size=4), label="amounts"))
    for name in allocation_names():
        policy = get_allocation(name)
        gscores = group_scores(coupled, scores, policy.normalisation)
        orders = removal_orders(coupled, gscores)
        cost_model = CostModel(coupled, measure(model, example), orders)
        allocator = policy.allocator(AllocationContext(coupled, gscores, orders, bounds, cost_model,
                                                       policy.cost_kind(None, "flops")))
        totals = []
        for amount in amounts:
            removal = allocator.allocate(amount)
            for group in coupled.groups:
                kept = group.size - removal.get(group.index, 0)
                assert kept in bounds.allowed_kept(group.size, len(orders[group.index])), (name, group.index, kept)
            totals.append(sum(removal.values()))
        assert totals == sorted(totals), (name, amounts, totals)
