"""Pruning schedules: the sparsity maths, megabatches, the scheduled loop on a real YOLO, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from detprune.adapters.yolo import YoloAdapter
from detprune.cli import main
from detprune.criteria import available_criteria, get_criterion
from detprune.criteria.base import build_criterion
from detprune.data.batch import iter_batches
from detprune.data.loader import load_train_val
from detprune.data.types import DetectionSet
from detprune.errors import DetpruneError
from detprune.pruning import apply_removals, conv_channels
from detprune.pruning.schedules import (
    KINDS,
    Step,
    epochs_for_budget,
    flops_schedule,
    image_passes,
    iterative_steps,
    megabatch_indices,
    one_shot_steps,
    progressive_steps,
    split_megabatches,
)
from detprune.workflow.measure import model_cost
from detprune.workflow.progressive import plot_history, run_schedule, write_history

from pruning_toys import one_thread  # noqa: F401

IMGSZ = 64
FAST_TRAIN = {"imgsz": IMGSZ, "batch": 4, "device": "cpu", "workers": 0}


def numbered(count: int) -> DetectionSet:
    """A set whose samples are their own indices: enough for the split and step logic."""
    return DetectionSet(["thing"], list(range(count)))


# --- sparsity schedules -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("steps, target", [(1, 0.5), (4, 0.5), (8, 0.3), (5, 0.9)])
def test_schedules_fall_monotonically_and_end_exactly_at_the_target(kind, steps, target):
    kept = flops_schedule(kind, steps, target)
    assert len(kept) == steps and kept[-1] == target
    assert all(a > b for a, b in zip([1.0] + kept, kept))  # every step removes something
    assert all(target <= k < 1 for k in kept)


def test_linear_removes_equal_amounts_and_cubic_is_ahead_of_it():
    linear, cubic = flops_schedule("linear", 4, 0.5), flops_schedule("cubic", 4, 0.5)
    assert np.allclose(np.diff([1.0] + linear), -0.125)
    assert all(c < lin for c, lin in zip(cubic[:-1], linear[:-1])) and cubic[-1] == linear[-1]
    steps = -np.diff([1.0] + cubic)
    assert all(a > b for a, b in zip(steps, steps[1:]))  # fast early, slow late (Zhu & Gupta)


def test_geometric_is_apps_official_density_rescaled():
    official = 0.8 ** np.linspace(1, 4.5, 8)
    assert np.allclose(flops_schedule("geometric", 8, float(official[-1])), official)
    kept = np.array([1.0] + flops_schedule("geometric", 6, 0.5))
    ratios = kept[2:] / kept[1:-1]
    assert np.allclose(ratios, ratios[0])  # a constant ratio between steps


@pytest.mark.parametrize("kind, steps, target", [("step", 4, 0.5), ("linear", 0, 0.5), ("linear", 2.5, 0.5),
                                                 ("cubic", 4, 1.0), ("cubic", 4, 0.0)])
def test_bad_schedules_are_errors(kind, steps, target):
    with pytest.raises(DetpruneError):
        flops_schedule(kind, steps, target)


# --- megabatches, steps, budgets ----------------------------------------------------------------


def test_megabatches_are_a_seeded_equal_partition():
    parts = megabatch_indices(62, 4, seed=3)
    assert sorted(len(p) for p in parts) == [15, 15, 16, 16]
    assert sorted(i for p in parts for i in p) == list(range(62))
    assert parts == megabatch_indices(62, 4, seed=3) and parts != megabatch_indices(62, 4, seed=4)
    sets = split_megabatches(numbered(62), 4, seed=3)
    assert [s.samples for s in sets] == parts
    with pytest.raises(DetpruneError, match="at most one per image"):
        megabatch_indices(3, 4, seed=0)
    with pytest.raises(DetpruneError):
        megabatch_indices(10, 0, seed=0)


def test_progressive_steps_score_on_what_was_seen_and_replay_earlier_megabatches():
    train = numbered(60)
    parts = megabatch_indices(60, 4, seed=1)
    steps = progressive_steps(train, 4, 0.5, epochs=2, seed=1)
    assert [s.flops for s in steps] == flops_schedule("linear", 4, 0.5)
    for t, step in enumerate(steps):
        seen = sorted(i for p in parts[: t + 1] for i in p)
        assert step.seen.samples == seen and step.score_on.samples == seen
        assert step.train_on.samples == seen  # full replay: the new megabatch and all earlier ones
    assert image_passes(steps) == 2 * (15 + 30 + 45 + 60) == 300

    half = progressive_steps(train, 4, 0.5, replay=0.5, score_images=10, seed=1)
    for t, step in enumerate(half):
        earlier = set(i for p in parts[:t] for i in p)
        assert set(parts[t]) <= set(step.train_on.samples)
        assert len(set(step.train_on.samples) & earlier) == round(0.5 * len(earlier))
        assert len(step.score_on) == min(10, len(step.seen)) and set(step.score_on.samples) <= set(step.seen.samples)
    none = progressive_steps(train, 4, 0.5, replay=0.0, seed=1)
    assert [s.train_on.samples for s in none] == parts
    with pytest.raises(DetpruneError, match="replay"):
        progressive_steps(train, 4, 0.5, replay=1.5)


def test_equal_budgets_across_schedules():
    train = numbered(60)
    budget = image_passes(progressive_steps(train, 4, 0.5, epochs=2))
    one_shot = one_shot_steps(train, 0.5, epochs=epochs_for_budget(budget, [60]))
    iterative = iterative_steps(train, 5, 0.5, epochs=epochs_for_budget(budget, [60] * 5))
    assert image_passes(one_shot) == image_passes(iterative) == budget == 300
    assert [s.epochs for s in one_shot] == [5] and [s.epochs for s in iterative] == [1] * 5
    assert [s.flops for s in iterative] == flops_schedule("linear", 5, 0.5)
    with pytest.raises(DetpruneError, match="whole number of epochs"):
        epochs_for_budget(300, [60] * 7)


# --- SNIP ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(synthetic_kitti):
    return load_train_val(str(synthetic_kitti), val_count=4, seed=0)


def _yolo(class_names):
    adapter = YoloAdapter()
    return adapter, adapter.prepare_for_pruning(adapter.load("yolov8n.yaml", class_names=class_names))


def test_snip_is_taylor_with_absolute_products(data):
    train, _ = data
    assert "snip" in available_criteria()
    adapter, model = _yolo(train.class_names)
    snip = get_criterion("snip", progress=False).score(adapter, model, iter_batches(train[:4], IMGSZ, 2))
    taylor = get_criterion("taylor", reduction="abs", progress=False).score(
        adapter, model, iter_batches(train[:4], IMGSZ, 2)
    )
    assert snip.keys() == taylor.keys() and all(torch.equal(snip[k], taylor[k]) for k in snip)
    squared = get_criterion("taylor", progress=False).score(adapter, model, iter_batches(train[:4], IMGSZ, 2))
    assert not all(torch.allclose(snip[k], squared[k]) for k in snip)
    with pytest.raises(DetpruneError, match="takes no option reduction"):
        build_criterion("snip", {"reduction": "squared"})


# --- the loop on a real YOLO --------------------------------------------------------------------


@pytest.fixture(scope="module")
def progressive(data, tmp_path_factory):
    train, val = data
    adapter, model = _yolo(train.class_names)
    original = conv_channels(model)
    steps = progressive_steps(train, 2, 0.5, epochs=1, seed=0)
    out = tmp_path_factory.mktemp("progressive")
    result = run_schedule(adapter, model, steps, val, criterion=get_criterion("snip", progress=False), out_dir=out,
                          imgsz=IMGSZ, batch_size=4, train_options=FAST_TRAIN, progress=False)
    return {"adapter": adapter, "result": result, "steps": steps, "out": out, "original": original, "train": train}


def test_progressive_run_ends_at_the_target_with_a_record_per_step(progressive):
    result, steps = progressive["result"], progressive["steps"]
    history = result.history
    assert [r.step for r in history] == [0, 1, 2] and [r.seen_images for r in history] == [0, 4, 8]
    flops = [r.flops_kept for r in history]
    assert flops[0] == 1.0 and all(a > b for a, b in zip(flops, flops[1:]))
    for record, step in zip(history[1:], steps):
        assert record.cut and abs(record.flops_kept - step.flops) <= 0.02 * step.flops
        assert record.trained_images == len(step.train_on)
        assert record.val["mAP50"] is not None and record.train_mAP50 is not None
        assert record.gap == pytest.approx(record.train_mAP50 - record.val["mAP50"])
    cost = model_cost(progressive["adapter"], result.model, IMGSZ)
    assert cost.macs / result.prune.before.macs == pytest.approx(history[-1].flops_kept)
    assert result.prune.achieved["flops"] == pytest.approx(history[-1].flops_kept)
    assert (progressive["out"] / "step1" / "finetune").is_dir() and (progressive["out"] / "step2" / "finetune").is_dir()


def test_scheduled_model_reloads_and_its_cuts_replay_on_a_fresh_copy(progressive, tmp_path):
    adapter, result = progressive["adapter"], progressive["result"]
    adapter.save(result.model, tmp_path / "pruned.pt")
    reloaded = adapter.load_checkpoint(tmp_path / "pruned.pt")
    assert conv_channels(reloaded) == conv_channels(result.model) != progressive["original"]
    # the composed removals (original numbering) rebuild the final widths from the original
    _, fresh = _yolo(progressive["train"].class_names)
    apply_removals(adapter, fresh, result.prune.removed, imgsz=IMGSZ)
    assert conv_channels(fresh) == conv_channels(result.model)
    write_history(tmp_path / "schedule.json", result, {"schedule": "progressive"})
    saved = json.loads((tmp_path / "schedule.json").read_text())
    assert saved["schedule"] == "progressive" and len(saved["history"]) == 3
    assert plot_history(result.history, tmp_path / "schedule.png").stat().st_size > 0


def test_a_step_already_at_its_target_is_trained_not_cut(data, tmp_path):
    train, val = data
    adapter, model = _yolo(train.class_names)
    steps = [Step(0.7, train, train[:4], 1, train), Step(0.7, train, train[:4], 1, train)]
    result = run_schedule(adapter, model, steps, val, criterion=get_criterion("l1"), out_dir=tmp_path, imgsz=IMGSZ,
                          batch_size=4, train_options=FAST_TRAIN, train_eval_images=0, progress=False)
    assert [r.cut for r in result.history] == [False, True, False]
    assert result.history[2].flops_kept == result.history[1].flops_kept and result.history[2].train_mAP50 is None
    assert (tmp_path / "step2" / "finetune").is_dir()


# --- CLI ----------------------------------------------------------------------------------------


def test_cli_progressive_writes_the_model_and_the_schedule(synthetic_kitti, tmp_path, capsys):
    out = tmp_path / "app"
    code = main(["prune", "--model", "yolov8n.yaml", "--random-init",
                 "--data", str(synthetic_kitti), "--criterion", "snip",
                 "--target-flops", "0.5", "--schedule", "progressive", "--megabatches", "2", "--replay", "0.5",
                 "--sparsity-schedule", "cubic", "--imgsz", str(IMGSZ), "--batch-size", "4", "--finetune-batch", "4",
                 "--val-count", "4", "--no-eval", "--device", "cpu", "--out", str(out)])
    assert code == 0
    for name in (
        "pruned.pt",
        "prune.json",
        "channels.csv",
        "scores.pt",
        "config.yaml",
        "schedule.json",
        "schedule.png",
    ):
        assert (out / name).is_file(), name
    report = json.loads((out / "prune.json").read_text())
    assert abs(report["achieved"]["flops"] - 0.5) <= 0.01
    schedule = json.loads((out / "schedule.json").read_text())
    assert schedule["schedule"] == "progressive" and schedule["sparsity_schedule"] == "cubic"
    assert [round(s["flops"], 4) for s in schedule["plan"]] == [round(f, 4) for f in flops_schedule("cubic", 2, 0.5)]
    assert [r["step"] for r in schedule["history"]] == [0, 1, 2]
    # replay 0.5 of the 4 images of megabatch 1 at step 2: 4 new + 2 replayed
    assert [s["trained_images"] for s in schedule["plan"]] == [4, 6]
    model = YoloAdapter().load_checkpoint(out / "pruned.pt")
    assert conv_channels(model) == {k: v["after"] for k, v in json.loads((out / "channels.json").read_text()).items()}
    assert yaml.safe_load((out / "config.yaml").read_text())["schedule"] == "progressive"
    assert "schedule: 2 steps" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--megabatches", "4"], "--megabatches: not an option of --schedule one-shot"),
    (["--schedule", "progressive", "--megabatches", "1", "--data", "x"], "--megabatches must be >= 2"),
    (["--schedule", "iterative", "--steps", "1", "--data", "x"], "--steps must be >= 2"),
    (["--schedule", "progressive"], "give --data"),
    (["--schedule", "progressive", "--data", "x", "--replay", "1.5"], "--replay is a fraction"),
    (["--schedule", "progressive", "--data", "x", "--steps", "3"], "--steps: not an option of --schedule progressive"),
    (["--schedule", "iterative", "--data", "x", "--epochs-per-step", "0"], "--epochs-per-step must be >= 1"),
    (["--schedule", "iterative", "--data", "x", "--epochs-per-step", "2", "--finetune-epochs", "2"], "not both"),
])
def test_bad_schedule_flags_are_one_line_errors(extra, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["prune", "--model", "yolov8n.yaml", "--random-init",
                 "--target-flops", "0.5", "--out", str(out)] + extra) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not out.exists()


def test_schedule_needs_a_flops_target_and_enough_images(synthetic_kitti, tmp_path, capsys):
    base = ["prune", "--model", "yolov8n.yaml", "--random-init",
            "--data", str(synthetic_kitti), "--schedule", "progressive",
            "--imgsz", str(IMGSZ), "--val-count", "4", "--device", "cpu"]
    assert main(base + ["--target-params", "0.5", "--out", str(tmp_path / "a")]) == 2
    assert "give --target-flops" in capsys.readouterr().err
    assert main(base + ["--target-flops", "0.5", "--megabatches", "50", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "cannot split 8 images into 50 megabatches" in err and err.count("\n") == 1
    assert not (tmp_path / "b").exists()
