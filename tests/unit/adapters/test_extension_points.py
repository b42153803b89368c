"""A new allocation policy, latency backend or detector family is one class plus its registration."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from torch import nn

from detprune.adapters import base as adapters
from detprune.pruning import policies, prune_model
from detprune.pruning.allocation import snap_kept
from detprune.runtime import LatencyBackend, LatencyStats, base as runtime

from pruning_toys import ResidualConcatNet, ToyAdapter, one_thread  # noqa: F401


# --- an allocation: the widest groups lose channels first ----------------------------------------
class WidestFirst(policies.AllocationPolicy):
    name = "toy-widest-first"
    normalisation = "max"

    def allocator(self, context):
        return _WidestFirst(context)


class _WidestFirst:
    def __init__(self, context):
        self.sizes = {g.index: g.size for g in context.coupled.groups}
        self.allowed = {g.index: context.limits.allowed_kept(g.size, len(context.orders[g.index]))
                        for g in context.coupled.groups}
        self.caps = {g: self.sizes[g] - int(a[0]) for g, a in self.allowed.items()}
        self.order = sorted(self.caps, key=lambda g: (-self.sizes[g], g))
        self.prunable_channels = sum(self.sizes[g] for g in self.caps if self.caps[g] > 0)

    def allocate(self, amount: float) -> dict[int, int]:
        budget = int(round(min(max(amount, 0.0), 1.0) * sum(self.caps.values())))
        removal = {}
        for g in self.order:
            take = min(self.caps[g], budget)
            budget -= take
            kept = snap_kept(self.allowed[g], self.sizes[g] - take)
            if kept < self.sizes[g]:
                removal[g] = self.sizes[g] - kept
        return removal

    def removed_fraction(self, removal) -> float:
        return sum(removal.values()) / self.prunable_channels if self.prunable_channels else 0.0


@pytest.fixture
def widest_first():
    policies.register_allocation(WidestFirst)
    yield WidestFirst
    policies._ALLOCATIONS.pop(WidestFirst.name, None)


def _scores(model: nn.Module) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {n: torch.rand(m.out_channels, generator=g) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def test_a_toy_allocation_is_one_class_and_a_registration(widest_first):
    assert "toy-widest-first" in policies.allocation_names()
    model = ResidualConcatNet().eval()
    result = prune_model(ToyAdapter(protected=("head",)), model, _scores(model), ratio=0.3,
                         allocation="toy-widest-first", round_to=1, min_channels=1)
    assert result.settings["allocation"] == "toy-widest-first"
    assert result.settings["normalisation"] == "max"  # the allocation's own normalisation
    assert abs(result.achieved["ratio"] - 0.3) < 0.02
    # the widest coupled group (fuse, 48 wide) went to its floor (max_ratio 0.8) first, the next
    # widest (the concat's 40-wide right branch) gave the rest, the narrower ones nothing
    after, before = result.channels_after, result.channels_before
    assert before["fuse.0"] == 48 and after["fuse.0"] == 10
    assert after["right.0"] < before["right.0"] and after["stem.0"] == before["stem.0"]


def test_an_allocation_object_is_accepted_as_it_is():
    model = ResidualConcatNet().eval()
    result = prune_model(ToyAdapter(protected=("head",)), model, _scores(model), ratio=0.2, allocation=WidestFirst(),
                         round_to=1, min_channels=1)
    assert result.settings["allocation"] == "toy-widest-first"


def test_unknown_policies_name_the_registered_ones(widest_first):
    model = ResidualConcatNet().eval()
    with pytest.raises(Exception, match="toy-widest-first"):
        prune_model(ToyAdapter(protected=("head",)), model, _scores(model), ratio=0.2, allocation="nope")


# --- a latency backend: times a module with a fixed clock ------------------------------------------
class FixedClock(LatencyBackend):
    name = "toy-fixed-clock"
    prepared: list[str] = []

    def prepare(self, module, example, work, tag="model", **options):
        self.prepared.append(tag)
        return module

    def time(self, artifact, input_shape, warmup, runs, *, threads=None) -> LatencyStats:
        ms = 1.0 + sum(p.numel() for p in artifact.parameters()) / 1e4
        return LatencyStats.from_samples([ms] * runs, backend=self.name, device="toy", input_shape=input_shape,
                                         precision="fp32", warmup=warmup)


@pytest.fixture
def fixed_clock():
    runtime.register_backend(FixedClock)
    yield FixedClock
    runtime._REGISTRY.pop(FixedClock.name, None)


def test_a_toy_backend_is_one_class_and_a_registration(fixed_clock, tmp_path):
    assert "toy-fixed-clock" in runtime.names()
    small, big = nn.Conv2d(3, 4, 3), nn.Conv2d(3, 64, 3)
    artifacts = {tag: runtime.prepare("toy-fixed-clock", m, torch.rand(1, 3, 8, 8), tmp_path, tag)
                 for tag, m in (("small", small), ("big", big))}
    assert FixedClock.prepared[-2:] == ["small", "big"]
    stats = runtime.time_side_by_side("toy-fixed-clock", artifacts, (1, 3, 8, 8), warmup=0, runs=3)
    assert stats["small"].median_ms < stats["big"].median_ms and stats["big"].runs == 3
    assert runtime.measure_latency("toy-fixed-clock", small, (1, 3, 8, 8), 0, 2).backend == "toy-fixed-clock"
    runtime.check_backend("toy-fixed-clock")


def test_the_cli_offers_a_registered_backend(fixed_clock):
    from detprune.commands import bench

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--model", "m.pt", "--pruned", "p.pt", "--backend", "toy-fixed-clock"])
    assert args.backend == "toy-fixed-clock"


# --- a detector family: one package (here a class) and one registry line --------------------------
class ToyFamily(ToyAdapter):
    family = "toy-family"

    @classmethod
    def owns(cls, model) -> bool:
        return isinstance(model, ResidualConcatNet)


def test_a_family_registers_with_one_line_and_is_found_by_model():
    adapters.register_family("toy-family", ToyFamily)
    try:
        assert "toy-family" in adapters.families()
        found = adapters.adapter_for_model(ResidualConcatNet())
        assert isinstance(found, ToyFamily)
        # capabilities a family does not declare have their documented defaults
        assert found.dependency_graph_options(ResidualConcatNet()) == {}
        assert found.roi_pool_points(ResidualConcatNet()) == []
        assert found.weighted_detection_loss is None
    finally:
        adapters.FAMILIES.pop("toy-family", None)
    assert adapters.adapter_for_model(ResidualConcatNet()) is None


def test_every_family_checkpoint_class_is_on_the_safe_loading_allow_list():
    from detprune.utils.checkpoints import MODULE_TREES

    for family in adapters.families():
        for module in adapters.adapter_class(family).safe_load_modules:
            assert any(module == t or module.startswith(t + ".") for t in MODULE_TREES), (family, module)


def test_finetune_options_are_renamed_for_each_family():
    options = adapters.FinetuneOptions(lr=0.01, batch=4, val_every_epoch=False, label="epochs")
    yolo = adapters.adapter_class("yolo")().trainer_options(options)
    rcnn = adapters.adapter_class("rcnn")().trainer_options(adapters.FinetuneOptions(lr=0.01, batch=4, label="epochs"))
    assert yolo == {"lr0": 0.01, "batch": 4, "val": False, "progress_label": "epochs", "exist_ok": True}
    assert rcnn == {"lr": 0.01, "batch_size": 4}  # its loop has no epoch bar to name
    assert np.isclose(adapters.FinetuneOptions.from_dict({"lr": 0.1, "momentum": 0.8}).as_dict()["momentum"], 0.8)


def test_a_checkpoint_naming_the_old_rewrites_module_still_loads(tmp_path):
    """Pruned YOLO checkpoints written before adapters/yolo/ was a package pickle their split
    blocks as detprune.adapters.yolo_rewrites.*; that path stays importable and allowed."""
    from detprune.adapters.yolo import YoloAdapter
    from detprune.adapters.yolo import rewrites

    adapter = YoloAdapter()
    model = adapter.prepare_for_pruning(adapter.load("yolov8n.yaml"))
    split = {type(m) for m in model.modules() if isinstance(m, rewrites.SPLIT_TYPES)}
    assert split
    old = {cls: cls.__module__ for cls in split}
    try:
        for cls in split:
            cls.__module__ = "detprune.adapters.yolo_rewrites"
        path = adapter.save(model, tmp_path / "old.pt")
    finally:
        for cls, module in old.items():
            cls.__module__ = module
    assert b"detprune.adapters.yolo_rewrites" in _pickle_bytes(path)
    again = adapter.load_checkpoint(path)
    assert {type(m) for m in again.modules() if isinstance(m, rewrites.SPLIT_TYPES)} == split


def _pickle_bytes(path) -> bytes:
    import zipfile

    with zipfile.ZipFile(path) as archive:
        return b"".join(archive.read(n) for n in archive.namelist() if n.endswith("data.pkl"))


class RecordingFamily(ToyAdapter):
    """Records what the fine-tuning stage hands the family's trainer."""

    family = "recording"
    finetune_names = {"lr": "learning_rate", "label": None}
    calls: list = []

    def finetune(self, model, data, *, epochs, out_dir, **options):
        self.calls.append((data, epochs, out_dir, options))
        return model


def test_finetune_splits_hands_the_family_trainer_its_own_names(tmp_path):
    adapter, model = RecordingFamily(), nn.Linear(2, 2)
    options = adapters.FinetuneOptions(lr=0.1, batch=2, label="epochs", extra={"momentum": 0.8})
    tuned = adapter.finetune_splits(model, "train-split", "val-split", epochs=3, out_dir=tmp_path, options=options)
    assert tuned is model
    data, epochs, out_dir, given = RecordingFamily.calls[-1]
    assert data == {"train": "train-split", "val": "val-split"} and epochs == 3 and out_dir == tmp_path / "finetune"
    assert given == {"learning_rate": 0.1, "batch": 2, "momentum": 0.8}
    with pytest.raises(Exception, match="per-epoch"):  # a family without epoch callbacks refuses them
        adapter.finetune_splits(model, "t", "v", epochs=1, out_dir=tmp_path,
                                options=adapters.FinetuneOptions(callbacks={"on_fit_epoch_end": print}))



def test_the_run_reaches_a_new_family_through_its_capabilities_alone(tmp_path):
    """The workflow's fine-tuning stage, its baseline trainer and its ONNX metadata name no family:
    a family added outside detprune gets its own trainer names, teacher and output layout."""
    from detprune.workflow.baseline import Flatness, train_until_flat
    from detprune.workflow.onnx_metadata import onnx_metadata
    from detprune.workflow.stages import finetune_variant

    class LayoutFamily(RecordingFamily):
        def class_names(self, model):
            return ["car"]

        def onnx_output_layout(self, model):
            return "one row per box"

    adapter, model, teacher = LayoutFamily(), nn.Linear(2, 2), nn.Linear(2, 2)
    finetune_variant(adapter, model, "train-split", "val-split", epochs=2, out_dir=tmp_path, lr=0.5, batch=None,
                     teacher=teacher, distill_weight=3.0, label="epochs")
    data, epochs, out_dir, given = RecordingFamily.calls[-1]
    assert data == {"train": "train-split", "val": "val-split"} and epochs == 2 and out_dir == tmp_path / "finetune"
    assert given == {"learning_rate": 0.5, "teacher": teacher, "distill_weight": 3.0}
    finetune_variant(adapter, model, "t", "v", epochs=1, out_dir=tmp_path, distill_weight=3.0)
    assert RecordingFamily.calls[-1][3] == {}  # a weight without a teacher distils nothing
    with pytest.raises(Exception, match="validation"):  # no per-epoch curve: no training until flat
        train_until_flat(adapter, model, "t", "v", max_epochs=2, rule=Flatness(), out_dir=tmp_path)
    meta = onnx_metadata(adapter, model, 64)
    assert meta["detprune.family"] == "recording" and meta["detprune.output"] == "one row per box"

def test_limits_go_in_as_one_object():
    from detprune.pruning.allocation import Limits

    model = ResidualConcatNet().eval()
    result = prune_model(ToyAdapter(protected=("head",)), model, _scores(model), ratio=0.3,
                         limits=Limits(round_to=4, min_channels=4, max_ratio=0.5))
    assert {k: result.settings[k] for k in ("round_to", "min_channels", "max_ratio")} == {
        "round_to": 4, "min_channels": 4, "max_ratio": 0.5}
    assert all(w % 4 == 0 for n, w in result.channels_after.items() if n != "head")
