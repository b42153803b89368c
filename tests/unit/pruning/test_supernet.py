"""The width supernet is exact: a masked subnet computes what the cut model computes, costs what
the cut model measures, and a batch whose slices run different subnets equals each run alone."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from detprune.adapters.yolo import YoloAdapter
from detprune.errors import BadInputError
from detprune.pruning import measure, prune_model
from detprune.pruning.allocation import Limits
from detprune.pruning.supernet import ChannelMasks, WidthSpace, running, thin

import pruning_toys
from pruning_toys import (
    ResidualConcatNet,
    SplitNet,
    ToyAdapter,
    assert_same_outputs,
    random_scores,
    randomise_norms,
    tensors,
)

one_thread = pruning_toys.one_thread  # module-scoped: one intra-op thread on the shared cores
IMGSZ = 64


def random_subnets(space, count, seed=0):
    rng = np.random.default_rng(seed)
    return [tuple(int(rng.integers(n)) for n in space.options) for _ in range(count)]


@pytest.fixture(scope="module")
def yolo():
    adapter = YoloAdapter()
    model = adapter.prepare_for_pruning(adapter.load("yolov8n.yaml", class_names=["car", "pedestrian"]))
    randomise_norms(model)  # non-trivial norm shifts: an unmasked norm output would show
    model.eval()
    space = WidthSpace(adapter, model, random_scores(model), imgsz=IMGSZ)
    return adapter, model, space, ChannelMasks(space)


def test_masked_yolov8n_subnets_equal_the_cut_models_and_their_measured_cost(yolo):
    adapter, model, space, masks = yolo
    x = torch.rand(2, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(1))
    subnets = random_subnets(space, 3) + [space.smallest()]
    for subnet in subnets:
        with torch.no_grad(), running(masks, subnet):
            masked = model(x)
        pruned = copy.deepcopy(model)
        result = prune_model(adapter, pruned, kept=space.to_kept(subnet), imgsz=IMGSZ)
        pruned.eval()
        with torch.no_grad():
            assert_same_outputs(pruned(x), masked)
        measured = measure(pruned, adapter.example_inputs(pruned, IMGSZ))
        assert space.cost(subnet) == measured == result.after
        assert result.after.macs < space.base.macs
    with torch.no_grad():  # outside the context the hooks are gone: the full model again
        assert_same_outputs(model(x), copy.deepcopy(model)(x))


def test_slices_of_one_batch_run_their_own_subnets(yolo):
    _, model, space, masks = yolo
    subnets = random_subnets(space, 3, seed=5)
    x = torch.rand(4, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(2))
    counts = [1, 2, 1]
    with torch.no_grad(), masks.active():
        masks.set(subnets, counts)
        together = tensors(model(x))
    start = 0
    for subnet, n in zip(subnets, counts):
        with torch.no_grad(), running(masks, subnet):
            alone = tensors(model(x[start:start + n]))
        assert_same_outputs(alone, [t[start:start + n] for t in together])
        start += n
    with masks.active():
        masks.set(subnets, counts)
        with pytest.raises(Exception, match="masks cover 4 samples"):
            model(x[:3])


@pytest.mark.parametrize("net, protected", [(ResidualConcatNet, ("head",)), (SplitNet, ("head",))])
def test_toy_nets_with_residuals_concats_and_split_layers(net, protected):
    torch.manual_seed(0)
    adapter, model = ToyAdapter(protected=protected), net()
    randomise_norms(model)
    model.eval()
    space = WidthSpace(adapter, model, random_scores(model, 3), imgsz=32, limits=Limits(round_to=4, min_channels=4))
    masks = ChannelMasks(space)
    x = torch.rand(2, 3, 32, 32)
    for subnet in random_subnets(space, 4, seed=1) + [space.smallest()]:
        with torch.no_grad(), running(masks, subnet):
            masked = model(x)
        pruned = copy.deepcopy(model)
        result = prune_model(adapter, pruned, kept=space.to_kept(subnet), imgsz=32, round_to=4, min_channels=4)
        with torch.no_grad():
            assert_same_outputs(pruned.eval()(x), masked)
        assert space.cost(subnet) == result.after
        # the widths written out read back as the same subnet
        assert space.from_widths(space.widths(subnet)) == subnet


def test_widths_are_prefixes_of_the_criterion_order(yolo):
    _, model, space, _ = yolo
    choice = space.choices[5]
    scores = random_scores(model)[choice.root]
    keep = choice.kept_positions(0)
    assert keep.sum() == choice.widths[0]
    # a group with one member: the kept channels are its best-scored ones
    assert len(space.coupled.groups[choice.group].members) == 1
    assert set(np.flatnonzero(keep)) == set(torch.argsort(scores, descending=True)[: int(choice.widths[0])].tolist())
    assert space.largest() == tuple(n - 1 for n in space.options) and space.to_kept(space.largest()) == {}


def test_width_choices_are_thinned_evenly_and_bad_subnets_refused(yolo):
    _, _, space, _ = yolo
    widths = np.arange(8, 129, 8)
    assert thin(widths, 4).tolist() == [8, 48, 88, 128] and thin(widths, 40).tolist() == widths.tolist()
    assert max(space.options) <= 8 and all(c.widths[-1] == c.size for c in space.choices)
    with pytest.raises(BadInputError):
        space.check((0,) * (len(space) - 1))
    with pytest.raises(BadInputError):
        space.from_widths({space.choices[0].root: 3})
    with pytest.raises(BadInputError):
        thin(widths, 1)
