"""The width prior, supernet training, the evolutionary search and ``detprune search``."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from detprune.adapters.yolo import YoloAdapter
from detprune.cli import main
from detprune.data.loader import load_train_val
from detprune.errors import BadInputError, DetpruneError
from detprune.pruning.prior import WidthPrior
from detprune.pruning.search import FlopsBudget, LatencyBudget, cut, evolve, kendall_tau
from detprune.pruning.supernet import ChannelMasks, WidthSpace
from detprune.pruning.supernet_train import SupernetEstimator, _schedule, slice_counts, step_subnets, train_supernet
from detprune.workflow.measure import model_cost

import pruning_toys
from pruning_toys import random_scores

one_thread = pruning_toys.one_thread  # module-scoped: one intra-op thread on the shared cores
IMGSZ = 64


@pytest.fixture(scope="module")
def space():
    adapter = YoloAdapter()
    model = adapter.prepare_for_pruning(adapter.load("yolov8n.yaml", class_names=["car", "pedestrian"]))
    return WidthSpace(adapter, model, random_scores(model), imgsz=IMGSZ)


def test_stratified_samples_cover_the_flops_range_evenly(space):
    prior = WidthPrior(space, bins=8)
    rng = np.random.default_rng(0)
    stratified = prior.histogram([space.flops_fraction(prior.sample(rng)) for _ in range(160)])
    independent = prior.histogram([space.flops_fraction(prior.draw(rng)) for _ in range(160)])
    # independent widths pile up in the middle (a sum of many terms); the bins leave no gap
    assert (independent == 0).sum() >= 3 and independent.max() >= 60
    assert stratified.min() >= 8 and stratified.max() <= 40


def test_repair_lands_in_the_window(space):
    prior = WidthPrior(space)
    rng = np.random.default_rng(1)
    for low, high in ((0.2, 0.25), (0.45, 0.5), (0.85, 0.9)):
        subnet = prior.repair(space.largest(), low, high, rng)
        assert low <= space.flops_fraction(subnet) <= high


def test_the_update_moves_probability_to_the_options_of_better_subnets(space):
    prior = WidthPrior(space)
    rng = np.random.default_rng(2)
    subnets = [prior.draw(rng) for _ in range(40)]
    flops = [space.flops_fraction(s) for s in subnets]
    # quality: FLOPs (which the fit removes) plus a bonus for the narrowest option of group 0
    quality = [f + (0.05 if s[0] == 0 else 0.0) for s, f in zip(subnets, flops)]
    before = prior.probabilities()
    for _ in range(5):
        prior.update(subnets, flops, quality)
    after = prior.probabilities()
    assert after[0][0] > before[0][0] + 0.1
    # a pure "wider is better" signal is the fit itself: no advantage, no change
    plain = WidthPrior(space)
    record = plain.update(subnets, flops, [2.0 * f + 1.0 for f in flops])
    assert np.allclose(record["advantage"], 0.0, atol=1e-3)
    assert all(np.allclose(p, 1.0 / len(p)) for p in plain.probabilities())


def test_kendall_tau_matches_known_values():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # with ties: tau-b of scipy.stats.kendalltau's documented example
    assert kendall_tau([12, 2, 1, 12, 2], [1, 4, 7, 1, 0]) == pytest.approx(-0.47140452079103173)
    assert np.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))
    with pytest.raises(BadInputError):
        kendall_tau([1, 2], [1])


def test_evolution_finds_the_fittest_subnet_within_the_budget(space):
    # a known fitness: wide first groups are worth more than wide later ones
    weights = np.linspace(1.0, 0.0, len(space))
    fitness = lambda s: float(np.dot(weights, np.asarray(s) / (np.asarray(space.options) - 1)))  # noqa: E731
    budget = FlopsBudget(space, 0.5)
    prior = WidthPrior(space)
    result = evolve(space, prior, fitness, budget, population=12, generations=5, seed=0, progress=False)
    first = [h["fitness"] for h in result.history if h["generation"] == 0]
    assert 0.45 <= space.flops_fraction(result.best) <= 0.5 and result.budget_value <= 0.5
    assert result.fitness == max(h["fitness"] for h in result.history) > max(first)
    assert len({tuple(h["subnet"]) for h in result.history}) == len(result.history)  # nothing scored twice
    with pytest.raises(BadInputError):
        FlopsBudget(space, 0.0)


def test_the_sandwich_the_slices_and_the_learning_rate_schedule():
    assert slice_counts(8, 4) == [2, 2, 2, 2] and slice_counts(7, 4) == [2, 2, 2, 1] and slice_counts(2, 4) == [1, 1]
    factors = [_schedule(step, 4, 20) for step in range(20)]
    assert factors[:4] == sorted(factors[:4]) and factors[3] < 1 and factors[4] == pytest.approx(1.0)
    assert factors[4:] == sorted(factors[4:], reverse=True) and _schedule(20, 4, 20) == pytest.approx(0.01)


def test_supernet_training_search_and_cut_end_to_end(synthetic_kitti, tmp_path):
    adapter = YoloAdapter()
    train, val = load_train_val(synthetic_kitti, val_count=4, seed=0)
    model = adapter.prepare_for_pruning(adapter.load("yolov8n.yaml", class_names=train.class_names))
    space = WidthSpace(adapter, model, random_scores(model), imgsz=IMGSZ)
    masks, prior = ChannelMasks(space), WidthPrior(space)
    assert step_subnets(space, prior, 4, np.random.default_rng(0))[:2] == [space.largest(), space.smallest()]
    norms = {n: b.clone() for n, b in model.named_buffers() if "running" in n}
    weights = copy.deepcopy(model.state_dict())
    record = train_supernet(adapter, model, masks, prior, train, epochs=1, imgsz=IMGSZ, batch_size=4,
                            probe_subnets=4, progress=False)
    assert record.steps == 2 and np.isfinite(record.epoch_loss).all() and len(record.prior_updates) == 1
    state = model.state_dict()
    assert all(torch.equal(state[n], b) for n, b in norms.items())  # norms frozen: statistics untouched
    assert torch.equal(state["model.22.dfl.conv.weight"], weights["model.22.dfl.conv.weight"])  # DFL stays fixed
    assert not torch.equal(state["model.0.conv.weight"], weights["model.0.conv.weight"])  # the supernet learned

    estimator = SupernetEstimator(adapter, model, masks, val, imgsz=IMGSZ, batch_size=4)
    result = evolve(space, prior, estimator, FlopsBudget(space, 0.5), population=4, generations=2, progress=False)
    assert len(estimator.cache) == len(result.history) and 0.45 <= space.flops_fraction(result.best) <= 0.5
    pruned = cut(adapter, copy.deepcopy(model), space, result.best)
    flops = model_cost(adapter, pruned.model, IMGSZ)
    assert flops.macs / space.base.macs <= 0.5 and flops == space.cost(result.best)
    path = adapter.save(pruned.model, tmp_path / "pruned.pt")
    again = adapter.load_checkpoint(path)
    assert model_cost(adapter, again, IMGSZ) == flops


def test_a_latency_budget_times_each_candidate_once(space):
    adapter = YoloAdapter()
    model = space.coupled.model
    budget = LatencyBudget(adapter, model, space, 0.9, runs=3, warmup=1)
    try:
        small = budget.value(space.smallest())
        # timings of a 64 px model on a shared CPU are too noisy to order; what is checked:
        # a ratio was measured, once, and feasibility follows it
        assert np.isfinite(small) and small > 0 and budget.feasible(space.smallest()) == (small <= 0.9)
        assert budget.value(space.smallest()) == small and budget.timer.count == 1
    finally:
        budget.close()


def test_the_search_command_end_to_end(synthetic_kitti, tmp_path, capsys):
    out = tmp_path / "search"
    argv = ["search", "--model", "yolov8n.yaml", "--random-init",
            "--data", str(synthetic_kitti), "--target-flops", "0.5",
            "--supernet-epochs", "1", "--population", "4", "--generations", "2", "--imgsz", str(IMGSZ),
            "--batch-size", "4", "--val-count", "4", "--latency-runs", "0", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    record = json.loads((out / "search.json").read_text())
    assert (out / "search.png").stat().st_size > 0 and (out / "report.md").is_file()
    report = json.loads((out / "report.json").read_text())
    assert report["variants"][-1]["flops"] == record["cost"]["after"]["flops"] < report["variants"][0]["flops"]
    assert record["budget"]["kind"] == "flops" and 0.45 <= record["flops_kept"] <= 0.5
    assert len(record["history"]) == 8 and record["supernet"]["steps"] == 2
    model = YoloAdapter().load_checkpoint(out / "pruned.pt")
    assert model_cost(YoloAdapter(), model, IMGSZ).flops == record["cost"]["after"]["flops"]
    assert main(argv) == 2  # an existing folder is not replaced without --exist-ok
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    ([], "give one budget"),
    (["--target-flops", "0.5", "--target-latency", "0.5"], "give one budget"),
    (["--target-flops", "1.5"], "--target-flops"),
    (["--target-flops", "0.5", "--subnets-per-step", "1"], "--subnets-per-step"),
    (["--target-flops", "0.5", "--width-choices", "1"], "--width-choices"),
])
def test_bad_input_is_one_line(extra, message, tmp_path, capsys):
    code = main(["search", "--model", "yolov8n.yaml", "--random-init",
                 "--data", str(tmp_path), "--out", str(tmp_path / "o"), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1


def test_missing_data_is_one_line(tmp_path, capsys):
    code = main(["search", "--model", "yolov8n.yaml", "--random-init",
                 "--data", str(tmp_path / "none"), "--target-flops", "0.5",
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and not (tmp_path / "o").exists()


def test_an_unmeetable_budget_is_refused(space):
    prior = WidthPrior(space)
    with pytest.raises(DetpruneError, match="no candidate met"):
        evolve(space, prior, lambda s: 0.0, FlopsBudget(space, 0.01), population=2, generations=1, progress=False)
