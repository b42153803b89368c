"""Measured latency tables and latency as the cost of the allocation (``--cost latency``).

The tables here are injected (timings written by the test from a formula), so what is checked
is the table's arithmetic, its cache and the allocation it drives, not this machine's speed;
one tiny smoke test times real layers.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from torch import nn

from detprune.cli import main
from detprune.pruning import prune_model
from detprune.pruning.allocation import Limits
from detprune.pruning.flops import CostModel, measure
from detprune.pruning.groups import enumerate_groups
from detprune.pruning.latency_measure import device_name, latency_table
from detprune.pruning.latency_table import (
    LatencyCost,
    LatencyTable,
    LayerTiming,
    call_names,
    entry_op,
    grid_widths,
    monotone,
    movable_sides,
    table_key,
)

from pruning_toys import ToyAdapter, cbr, one_thread  # noqa: F401


class DepthwiseNet(nn.Module):
    """A depthwise conv at full resolution (few FLOPs, memory-bound: slow on a CPU) on a group
    of cheap 1x1 convs, then dense 3x3 convs at half resolution (many FLOPs), each width a group.

    MACs per channel (64 x 64 input, hand count): the depthwise group 3*4096 (stem) + 9*4096 (dw)
    + 64*1024 (down's input) = 114688; down's output 32*1024 + 9*64*1024 = 622592; mid's output
    9*64*1024 + 4*1024 = 593920. FLOPs make the depthwise group the cheapest to keep.
    """

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 32, k=1)
        self.dw = cbr(32, 32, groups=32)
        self.down = cbr(32, 64, k=1, s=2)
        self.mid = cbr(64, 64)
        self.head = nn.Conv2d(64, 4, 1)

    def forward(self, x):
        return self.head(self.mid(self.down(self.dw(self.stem(x)))))


def injected_table(coupled, key: str = "test", *, ms_per_mac: float = 1e-6, slow: dict[str, float] | None = None,
                   rest_ms: float = 1.0) -> LatencyTable:
    """A table whose layers take ``ms_per_mac`` per MAC, ``slow[layer]`` times more for the named ones."""
    slow = slow or {}
    movable = movable_sides(coupled)
    layers = {}
    for name, call in call_names(coupled):
        m = call.module
        op = entry_op(m)
        c_in = m.in_features if isinstance(m, nn.Linear) else m.in_channels
        c_out = m.out_features if isinstance(m, nn.Linear) else m.out_channels
        grid_out = grid_widths(c_out, (id(call.node), "out") in movable or op == "depthwise")
        grid_in = grid_out if op == "depthwise" else grid_widths(c_in, (id(call.node), "in") in movable)
        area = int(np.prod(call.output_shape[2:])) if op != "linear" else int(np.prod(call.input_shape[:-1]))
        k = int(np.prod(getattr(m, "kernel_size", (1,))))
        factor = slow.get(name.split("#")[0], 1.0) * ms_per_mac
        ms = [[factor * k * area * (co if op == "depthwise" else ci * co) for co in grid_out] for ci in grid_in]
        layers[name] = LayerTiming(op, c_in, c_out, grid_in, grid_out, ms)
    table = LatencyTable(key, "onnxruntime", "cpu: test", [1, 3, 64, 64], 1, layers)
    table.offset_ms = rest_ms
    return table


def _toy():
    torch.manual_seed(0)
    model = DepthwiseNet().eval()
    adapter = ToyAdapter(protected=("head",), imgsz=64)
    return adapter, model


def _coupled(adapter, model, imgsz=64, batch=1):
    return enumerate_groups(model, adapter.example_inputs(model, imgsz, batch), adapter.protected_layers(model))


# --- the cache key and the cache ---------------------------------------------------------------------


def test_the_cache_key_changes_with_backend_input_size_batch_and_threads():
    adapter, model = _toy()
    coupled = _coupled(adapter, model)
    base = table_key(coupled, "onnxruntime", "cpu: x", [1, 3, 64, 64], 1)
    assert base == table_key(_coupled(adapter, model), "onnxruntime", "cpu: x", [1, 3, 64, 64], 1)  # deterministic
    others = [
        table_key(coupled, "torch-cuda", "cpu: x", [1, 3, 64, 64], 1),
        table_key(coupled, "onnxruntime", "cpu: y", [1, 3, 64, 64], 1),
        table_key(_coupled(adapter, model, imgsz=32), "onnxruntime", "cpu: x", [1, 3, 32, 32], 1),
        table_key(_coupled(adapter, model, batch=2), "onnxruntime", "cpu: x", [2, 3, 64, 64], 1),
        table_key(coupled, "onnxruntime", "cpu: x", [1, 3, 64, 64], 2),
    ]
    assert len({base, *others}) == 6
    wider = DepthwiseNet()
    wider.mid = cbr(64, 72, k=1)
    wider.head = nn.Conv2d(72, 4, 1)
    assert table_key(_coupled(adapter, wider.eval()), "onnxruntime", "cpu: x", [1, 3, 64, 64], 1) != base


def test_a_table_is_measured_once_and_then_read_from_the_cache(tmp_path):
    adapter, model = _toy()
    said = []
    first = latency_table(adapter, model, imgsz=32, threads=1, warmup=0, runs=1, check_cuts=1, check_runs=1,
                          cache=tmp_path, say=said.append)
    files = list(tmp_path.glob("*.json"))
    assert [f.stem for f in files] == [first.key] and said[0].startswith("built latency table")
    assert first.check["cuts"] == 1 and len(first.layers) == 5
    # mark the cached file: a second call must return what the file says, not measure again
    data = json.loads(files[0].read_text())
    data["check"]["marker"] = "from the cache"
    files[0].write_text(json.dumps(data))
    again = latency_table(adapter, model, imgsz=32, threads=1, warmup=0, runs=1, cache=tmp_path, say=said.append)
    assert again.check["marker"] == "from the cache" and said[1].startswith("reusing latency table")
    assert again.key == first.key and again.layers == first.layers
    # another thread count is another table
    other = latency_table(
        adapter, model, imgsz=32, threads=2, warmup=0, runs=1, check_cuts=0, cache=tmp_path, say=said.append
    )
    assert other.key != first.key and len(list(tmp_path.glob("*.json"))) == 2


# --- what the table predicts ------------------------------------------------------------------------


def test_interpolation_is_exact_on_the_grid_and_linear_between():
    # ms = c_in * c_out on the grid: bilinear interpolation of a bilinear function is exact
    timing = LayerTiming("conv", 32, 64, [8, 16, 32], [16, 64], [[ci * co for co in (16, 64)] for ci in (8, 16, 32)])
    assert timing.at(32, 64) == timing.full == 32 * 64
    assert timing.at(24, 40) == pytest.approx(24 * 40)
    assert timing.at(4, 16) == pytest.approx(4 * 16)  # below the grid: the first segment, extended


def test_monotone_grids_never_dip():
    rng = np.random.default_rng(0)
    ms = monotone(rng.random((4, 5)))
    assert np.all(np.diff(ms, axis=0) >= 0) and np.all(np.diff(ms, axis=1) >= 0)


def test_predicted_latency_does_not_grow_when_a_group_narrows():
    adapter, model = _toy()
    coupled = _coupled(adapter, model)
    rng = np.random.default_rng(1)
    table = injected_table(coupled)
    for timing in table.layers.values():  # noisy timings, made monotone as the measurement does
        noisy = np.asarray(timing.ms) * rng.uniform(0.7, 1.3, np.shape(timing.ms))
        timing.ms = monotone(noisy).tolist()
    orders = {g.index: g.prunable for g in coupled.groups}
    cost = LatencyCost(table, coupled, CostModel(coupled, measure(model, adapter.example_inputs(model, 64)), orders))
    limits = Limits()
    assert cost({}) == pytest.approx(table.full_ms)
    for g in coupled.prunable_groups():
        removed = [g.size - int(w) for w in limits.allowed_kept(g.size, len(g.prunable))[::-1]]
        latencies = [cost({g.index: n}) for n in removed]
        assert all(b <= a + 1e-12 for a, b in zip(latencies, latencies[1:])), (g.root, latencies)
        assert all(cost.saving({}, g.index, n) >= 0 for n in removed)


def _dw_channels(adapter, model, table, cost):
    scores = {
        n: torch.ones(m.out_channels) for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and n != "head"
    }
    result = prune_model(adapter, model, scores, ratio=0.4, allocation="cost", cost=cost, latency_table=table, imgsz=64)
    return result.channels_after["dw.0"], result.channels_after["down.0"], result


def test_latency_cost_cuts_where_the_table_says_time_goes_not_where_the_flops_are():
    adapter, model = _toy()
    coupled = _coupled(adapter, model)
    # the depthwise conv is cheap in FLOPs but, in this table, 100x slower per MAC than the others
    table = injected_table(coupled, slow={"dw.0": 100.0})
    dw_flops, down_flops, _ = _dw_channels(adapter, _toy()[1], table, "flops")
    dw_latency, down_latency, result = _dw_channels(adapter, _toy()[1], table, "latency")
    # equal importance everywhere: each knapsack removes what saves most of its cost first
    assert dw_latency < dw_flops and down_latency > down_flops
    assert result.settings["cost"] == "latency" and result.settings["latency_table"] == "test"
    assert 0 < result.achieved["latency"] < 1
    # with the table priced by FLOPs alone (no slow layer), latency and FLOPs costs agree
    plain = injected_table(coupled)
    assert _dw_channels(adapter, _toy()[1], plain, "latency")[:2] == (dw_flops, down_flops)


def test_a_latency_target_is_met_on_the_predicted_latency():
    adapter, model = _toy()
    table = injected_table(_coupled(adapter, model), slow={"dw.0": 10.0})
    scores = {
        n: torch.rand(m.out_channels) for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and n != "head"
    }
    result = prune_model(adapter, model, scores, target_latency=0.5, allocation="cost", latency_table=table, imgsz=64,
                         round_to=1)  # channel by channel: a toy this small moves in coarse steps otherwise
    assert result.settings["cost"] == "latency" and abs(result.achieved["latency"] - 0.5) <= 0.02 * 0.5


# --- the command line -------------------------------------------------------------------------------

BASE = ["prune", "--model", "yolov5n.yaml", "--random-init", "--imgsz", "96", "--criterion", "l1"]


@pytest.mark.parametrize("flags, message", [
    (["--target-latency", "0.6"], "--target-latency needs --backend"),
    (["--target-flops", "0.5", "--allocation", "cost", "--cost", "latency"], "--cost latency needs --backend"),
    (["--target-latency", "0.6", "--backend", "torch-cuda"], "CUDA GPU"),
])
def test_a_latency_run_without_a_usable_backend_is_one_line(flags, message, tmp_path, capsys):
    if "torch-cuda" in flags and torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    code = main(BASE + flags + ["--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and message in err
    assert not (tmp_path / "run").exists()


def test_target_latency_uses_the_cached_table_and_reports_predicted_and_measured(tmp_path, capsys):
    from detprune.adapters import get_adapter
    from detprune.runtime import default_threads

    adapter = get_adapter("yolov5n.yaml")
    model = adapter.prepare_for_pruning(adapter.load("yolov5n.yaml")).eval()
    coupled = _coupled(adapter, model, imgsz=96)
    key = table_key(coupled, "onnxruntime", device_name("onnxruntime"), [1, 3, 96, 96], default_threads())
    cache = tmp_path / "tables"
    injected_table(coupled, key).save(cache / f"{key}.json")  # measured tables would take minutes here
    out = tmp_path / "run"
    code = main(BASE + ["--target-latency", "0.6", "--backend", "onnxruntime", "--allocation", "cost",
                        "--latency-cache", str(cache), "--latency-tolerance", "0.5", "--search-runs", "3",
                        "--out", str(out)])
    assert code == 0
    assert "reusing latency table" in capsys.readouterr().out
    search = json.loads((out / "prune.json").read_text())["latency_target"]
    assert search["method"] == "table" and search["table"]["key"] == key
    chosen = search["candidates"][search["chosen"]]
    assert (
        chosen["predicted_ratio"] == search["predicted_ratio"] and chosen["latency_ratio"] == search["measured_ratio"]
    )
    assert abs(chosen["predicted_ratio"] - chosen["latency_aim"]) <= 0.02 * chosen["latency_aim"]
    assert os.listdir(cache) == [f"{key}.json"]  # nothing measured into the cache


def test_the_aim_is_refined_by_the_ratio_then_along_the_secant():
    from detprune.pruning.latency_target import Candidate, next_aim

    first = Candidate(None, None, 0.6, latency_aim=0.5)  # asked 0.5, measured 0.6: the table under-predicts
    assert next_aim([first], 0.5) == pytest.approx(0.5 * 0.5 / 0.6)
    second = Candidate(None, None, 0.55, latency_aim=0.4)  # measured falls 0.05 per 0.1 of aim
    assert next_aim([first, second], 0.5) == pytest.approx(0.4 + (0.5 - 0.55) / 0.5)  # the secant: 0.3
    flat = Candidate(None, None, 0.55, latency_aim=0.3)  # no slope: back to the ratio
    assert next_aim([second, flat], 0.5) == pytest.approx(0.3 * 0.5 / 0.55)


def test_a_two_stage_detector_times_roi_align_and_prices_it_with_the_fpn_width():
    """RoIAlign is no conv or linear: the table times it beside the box head's first layer, and
    narrowing the FPN group makes the prediction fall by the rider's share as well as fc6's."""
    import onnxruntime as ort

    from detprune.adapters.rcnn import RcnnAdapter
    from detprune.adapters.rcnn.coupling import fpn_width_layers
    from detprune.pruning.latency_measure import roi_align_graph, roi_riders
    from detprune.pruning.latency_table import RIDER_SUFFIX
    from detprune.pruning.pruner import trace_forward
    from rcnn_models import shrink_for_cpu, small_model

    adapter = RcnnAdapter()
    model = adapter.prepare_for_pruning(shrink_for_cpu(small_model(), proposals=16)).eval()
    example = adapter.example_inputs(model, 128)
    coupled = enumerate_groups(model, example, adapter.protected_layers(model), trace_forward(adapter, model))
    riders = roi_riders(adapter, model, coupled)
    assert len(riders) == 1
    rider = riders[0]
    level = fpn_width_layers(model)[0][0]  # the finest FPN level's output conv
    fpn_width = level.out_channels
    assert rider.channels == fpn_width and rider.movable and rider.rois == 16 and rider.output_size == [7, 7]

    # the graph runs and pools every RoI to C x 7 x 7
    session = ort.InferenceSession(roi_align_graph(rider.feature_shape, 24, rider.rois, rider.output_size,
                                                   rider.sampling_ratio, rider.spatial_scale))
    x = np.random.default_rng(0).random([1, 24, *rider.feature_shape[2:]], dtype=np.float32)
    assert session.run(None, {"x": x})[0].shape == (16, 24, 7, 7)

    # an injected rider of 10 ms per channel, on top of the formula's layers
    table = injected_table(coupled)
    table.layers[rider.name] = LayerTiming("roi_align", fpn_width, fpn_width, [8, fpn_width], [8, fpn_width],
                                           [[80.0, 10.0 * fpn_width], [10.0 * fpn_width, 10.0 * fpn_width]])
    without = injected_table(coupled)
    orders = {g.index: g.prunable.astype(np.int64) for g in coupled.groups}
    cost_model = CostModel(coupled, measure(model, example, trace_forward(adapter, model)), orders)
    fpn = next(g for g in coupled.prunable_groups()
               if any(call.module is level and (id(call.node), "out") in {(id(t.node), t.side) for t in g.touches}
                      for call in coupled.calls))  # the group of the level's OUTPUT width
    cut = {fpn.index: fpn.size - 8}  # the FPN at 8 channels
    saving_with = LatencyCost(table, coupled, cost_model)
    saving_without = LatencyCost(without, coupled, cost_model)
    extra = (saving_with({}) - saving_with(cut)) - (saving_without({}) - saving_without(cut))
    assert extra == pytest.approx(10.0 * fpn_width - 80.0)  # the rider's full time minus its time at 8
    assert rider.name.endswith(RIDER_SUFFIX)
