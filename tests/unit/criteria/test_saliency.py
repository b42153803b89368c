"""Box-weighted gradient saliency on a tiny real conv detector (float64, CPU, milliseconds).

The detector and its adapter are in ``saliency_toys`` beside this file.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from detprune.criteria import get_criterion
from detprune.criteria.saliency import BoxWeightedSaliency, saliency_maps
from detprune.criteria.weight_map import WeightMapSpec, batch_weight_maps
from detprune.data.batch import Batch, iter_batches
from detprune.data.types import Sample
from detprune.errors import DetpruneError
from saliency_toys import BOXES, LABELS, Block, TinyAdapter, TinyDetector, centre_cells, make_batch, quiet, random_image


@pytest.fixture
def model() -> TinyDetector:
    return TinyDetector()


@pytest.fixture
def adapter() -> TinyAdapter:
    return TinyAdapter()


def three_images() -> list[Batch]:
    return [make_batch([random_image(i)], [BOXES[i]], [LABELS[i]]) for i in range(3)]


def reference_scores(adapter, model, batch: Batch, spec: WeightMapSpec) -> dict[str, torch.Tensor]:
    """The formula written out plainly: autograd with retain_grad, no hooks, weights on."""
    model.eval()
    x = batch.images.to(torch.float64)
    a1 = model.stem(x)
    a2 = model.mid(a1)
    a1.retain_grad()
    a2.retain_grad()
    total = x.new_zeros(())
    for b, (boxes, labels) in enumerate(zip(batch.boxes, batch.labels)):
        rows, cols = centre_cells(boxes)
        total = total + model.head(a2)[b, labels, rows, cols].sigmoid().sum()
    total.backward()
    model.zero_grad(set_to_none=True)
    out = {}
    for name, a in (("stem.conv", a1), ("mid.conv", a2)):
        m = batch_weight_maps(batch.boxes, batch.ignore, x.shape[-2:], a.shape[-2:], spec)
        out[name] = (m[:, None] * (a * a.grad).abs()).sum((0, 2, 3)).detach()
    return out


def test_scores_match_the_formula_computed_plainly(adapter, model):
    batch = make_batch([random_image(i) for i in range(3)], BOXES, LABELS)
    scores = quiet().score(adapter, model, [batch])
    expected = reference_scores(adapter, model, batch, WeightMapSpec())
    assert set(scores) == {"stem.conv", "mid.conv"}
    for name, value in scores.items():
        assert value.dtype == torch.float64 and value.shape == (model.get_submodule(name).out_channels,)
        assert (value > 0).all()
        torch.testing.assert_close(value, expected[name], rtol=1e-12, atol=0)


def test_registered_with_options_as_keywords():
    criterion = get_criterion("saliency", context=0.25, context_scale=2.0, background=0.1,
                              normalize_boxes=False, utility="loss", progress=False)
    assert isinstance(criterion, BoxWeightedSaliency)
    assert criterion.options()["context"] == 0.25 and criterion.options()["utility"] == "loss"
    with pytest.raises(DetpruneError, match="utility"):
        get_criterion("saliency", utility="iou")
    with pytest.raises(DetpruneError, match="context_scale"):
        get_criterion("saliency", context_scale=0.5)


def test_deterministic_and_independent_of_batch_size(adapter, model, tmp_path):
    samples = []
    for i, boxes in enumerate(BOXES):  # through real files, letterbox and collate
        path = tmp_path / f"{i}.png"
        cv2.imwrite(str(path), (random_image(i, 48).permute(1, 2, 0).numpy() * 255).astype(np.uint8))
        samples.append(Sample(path, 48, 48, np.array(boxes) * 1.5, LABELS[i]))
    one = quiet(seed=3).score(adapter, model, list(iter_batches(samples, 48, batch_size=1)))
    again = quiet(seed=3).score(adapter, model, iter_batches(samples, 48, batch_size=1))
    two = quiet(seed=3).score(adapter, model, list(iter_batches(samples, 48, batch_size=2)))
    for name in one:
        assert torch.equal(one[name], again[name])
        torch.testing.assert_close(one[name], two[name], rtol=1e-12, atol=1e-15)


def test_inert_channel_scores_exactly_zero(adapter, model):
    with torch.no_grad():
        model.stem.conv.weight[2] = 0  # zero in, and zero BN shift: the channel's output is 0
        model.stem.bn.bias[2] = 0
        model.mid.conv.weight[5] = 0
        model.mid.bn.bias[5] = -1.0  # negative shift through ReLU: also always 0
    scores = quiet().score(adapter, model, three_images())
    assert scores["stem.conv"][2] == 0 and scores["mid.conv"][5] == 0
    assert (scores["stem.conv"][[0, 1, 3, 4, 5]] > 0).all()


def test_boxes_over_zero_activations_contribute_nothing(adapter, model):
    image = torch.zeros(3, 64, 64, dtype=torch.float64)
    image[:, :16, :16] = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(1))
    dark = make_batch([image], [[[40, 40, 60, 60], [44, 24, 56, 36]]], [[0, 1]])
    nothing = quiet(context=0.0, background=0.0).score(adapter, model, [dark])
    assert all((value == 0).all() for value in nothing.values())
    # the same boxes over the textured corner do score: the zero above is not vacuous
    lit = make_batch([image], [[[0, 0, 20, 20], [4, 8, 16, 16]]], [[0, 1]])
    assert all((value > 0).any() for value in quiet(context=0.0).score(adapter, model, [lit]).values())
    # and adding it to a set changes nothing
    others = three_images()
    assert all(torch.equal(a, b) for a, b in zip(
        quiet(context=0.0).score(adapter, model, others).values(),
        quiet(context=0.0).score(adapter, model, [others[0], dark, *others[1:]]).values()))


def test_images_without_object_boxes_are_skipped_and_counted(adapter, model):
    criterion = quiet()
    images = three_images()
    no_boxes = make_batch([random_image(7)], [[]])
    only_ignore = make_batch([random_image(8)], [[[0, 0, 16, 16]]], [[-1]], [[True]])
    classless = make_batch([random_image(10)], [[[0, 0, 16, 16]]], [[-1]], [[False]])  # label -1: an ignore region
    mixed = make_batch([random_image(9), random_image(1)], [[], BOXES[1]], [[], LABELS[1]])
    scores = criterion.score(adapter, model, [images[0], no_boxes, only_ignore, classless, mixed, images[2]])
    stats = criterion.last_stats.as_dict()
    assert stats["images"] == 7 and stats["skipped_without_boxes"] == 4 and stats["scored"] == 3
    expected = quiet().score(adapter, model, images)
    for name in scores:
        torch.testing.assert_close(scores[name], expected[name], rtol=1e-12, atol=0)


def test_a_scoring_set_without_boxes_is_a_clear_error(adapter, model):
    empty = [make_batch([random_image(1), random_image(2)], [[], [[0, 0, 8, 8]]], [[], [-1]], [[], [True]])]
    with pytest.raises(DetpruneError, match="no object box"):
        quiet().score(adapter, model, empty)


def test_scoring_leaves_the_model_as_it_was(adapter, model):
    model.train()
    model.head.weight.requires_grad_(False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    quiet().score(adapter, model, three_images())
    quiet(utility="loss").score(adapter, model, three_images())
    assert model.training and model.stem.bn.training
    assert not model.head.weight.requires_grad and model.stem.conv.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_loss_utility_gives_other_non_negative_scores(adapter, model):
    confidence = quiet().score(adapter, model, three_images())
    loss = quiet(utility="loss").score(adapter, model, three_images())
    for name in confidence:
        assert torch.isfinite(loss[name]).all() and (loss[name] >= 0).all() and (loss[name] > 0).any()
        assert not torch.allclose(loss[name], confidence[name])


def test_box_normalisation_changes_the_scores(adapter, model):
    batch = make_batch([random_image(4, 64)], [[[2, 2, 6, 8], [10, 10, 62, 60]]], [[1, 0]])
    on = quiet().score(adapter, model, [batch])
    off = quiet(normalize_boxes=False).score(adapter, model, [batch])
    for name in on:  # not just a rescaling: the small box's channels gain weight
        assert not torch.allclose(on[name] / on[name].sum(), off[name] / off[name].sum())


def test_saliency_maps_add_up_to_the_scores(adapter, model):
    batch = make_batch([random_image(i) for i in range(3)], BOXES, LABELS)
    maps = saliency_maps(adapter, model, batch, ["mid.conv"])
    assert set(maps.channels) == {"mid.conv"}
    assert maps.channels["mid.conv"].shape == (3, 8, 8, 8) and maps.weights["mid.conv"].shape == (3, 8, 8)
    scores = quiet().score(adapter, model, [batch])
    torch.testing.assert_close(maps.channels["mid.conv"].sum((0, 2, 3)), scores["mid.conv"], rtol=1e-12, atol=0)
    with pytest.raises(DetpruneError, match="unknown layer"):
        saliency_maps(adapter, model, batch, ["head"])


class BoxBranchDetector(TinyDetector):
    """The tiny detector with a box branch that runs in every forward but no utility reads."""

    def __init__(self) -> None:
        super().__init__()
        self.box = Block(8, 4).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.mid(self.stem(x))
        self.box_output = self.box(features)
        return self.head(features)


class BoxBranchAdapter(TinyAdapter):
    def activation_points(self, model: BoxBranchDetector) -> dict[str, nn.Module]:
        return {**super().activation_points(model), "box.conv": model.box}


def test_layers_the_gradient_never_reaches_score_zero_and_are_listed():
    criterion = quiet()
    scores = criterion.score(BoxBranchAdapter(), BoxBranchDetector(), three_images())
    assert torch.equal(scores["box.conv"], torch.zeros(4, dtype=torch.float64))
    assert (scores["mid.conv"] > 0).any()
    assert criterion.last_stats.unreached_layers == ["box.conv"]


class SharedNeckDetector(TinyDetector):
    """A block applied at two resolutions (like a head shared across pyramid levels)."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()).double()

    def levels(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.mid(self.stem(x))
        return self.shared(features), self.shared(F.avg_pool2d(features, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fine, coarse = self.levels(x)
        return self.head(fine + F.interpolate(coarse, scale_factor=2.0))


class SharedNeckAdapter(TinyAdapter):
    def activation_points(self, model: SharedNeckDetector) -> dict[str, nn.Module]:
        return {"shared.0": model.shared}


def test_a_module_called_at_several_resolutions_adds_each_call_with_its_own_map():
    model, adapter = SharedNeckDetector(), SharedNeckAdapter()
    batch = make_batch([random_image(i) for i in range(3)], BOXES, LABELS)
    scores = quiet().score(adapter, model, [batch])

    model.eval()
    fine, coarse = model.levels(batch.images.to(torch.float64))
    fine.retain_grad()
    coarse.retain_grad()
    logits = model.head(fine + F.interpolate(coarse, scale_factor=2.0))
    cells = [centre_cells(batch.boxes[b]) for b in range(3)]
    total = sum(logits[b, LABELS[b], rows, cols].sigmoid().sum() for b, (rows, cols) in enumerate(cells))
    total.backward()
    expected = sum(
        (batch_weight_maps(batch.boxes, batch.ignore, (32, 32), a.shape[-2:])[:, None] * (a * a.grad).abs()).sum(
            (0, 2, 3)
        )
        for a in (fine, coarse)
    )
    assert fine.shape[-1] == 8 and coarse.shape[-1] == 4
    torch.testing.assert_close(scores["shared.0"], expected.detach(), rtol=1e-12, atol=0)
