"""Building a latency table by timing, and checking it on random cuts of the whole model.

Each conv / linear call becomes a small graph of its own (:func:`layer_graph`: the layer with
random weights and the activation that follows it in the model) at the input shape the call
saw; the grid variants of one layer are timed interleaved, round by round, after a warm-up, and
the median kept (:mod:`detprune.pruning.latency_table` explains the design). On ONNX Runtime
the graphs are written with ``onnx.helper``, which takes milliseconds where a torch export
takes a second; on ``torch-cuda`` they are modules timed in FP16 through CUDA graphs.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from detprune.errors import UnsupportedError
from detprune.pruning.latency_table import (
    DEFAULT_POINTS,
    RIDER_SUFFIX,
    LatencyTable,
    LatencyCost,
    LayerTiming,
    cache_dir,
    call_names,
    entry_op,
    grid_widths,
    monotone,
    relative_errors,
    table_key,
)

TABLE_BACKENDS = ("onnxruntime", "torch-cuda")
ACTIVATIONS = (nn.SiLU, nn.ReLU, nn.ReLU6, nn.Hardswish, nn.LeakyReLU)


def activation_after(model: nn.Module, name: str) -> nn.Module | None:
    """The activation that follows layer ``name``: its parent's ``act`` (ultralytics ``Conv``), or the
    next activation in its parent ``Sequential`` after any norm (torchvision ``Conv2dNormActivation``)."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    act = getattr(parent, "act", None)
    if isinstance(act, ACTIVATIONS) and getattr(parent, "conv", None) is model.get_submodule(name):
        return act
    if isinstance(parent, nn.Sequential):
        names = list(parent._modules)
        for later in names[names.index(child) + 1:]:
            m = parent._modules[later]
            if isinstance(m, ACTIVATIONS):
                return m
            if not isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
                return None
    return None


# --- one layer as a graph ----------------------------------------------------------------------------


def _onnx_activation(act: nn.Module | None, x: str, y: str):
    from onnx import helper

    if act is None:
        return [helper.make_node("Identity", [x], [y])]
    if isinstance(act, nn.SiLU):
        return [helper.make_node("Sigmoid", [x], ["sig"]), helper.make_node("Mul", [x, "sig"], [y])]
    if isinstance(act, nn.ReLU):
        return [helper.make_node("Relu", [x], [y])]
    if isinstance(act, nn.ReLU6):
        return [helper.make_node("Clip", [x, "zero", "six"], [y])]
    if isinstance(act, nn.Hardswish):
        return [helper.make_node("HardSwish", [x], [y])]
    return [helper.make_node("LeakyRelu", [x], [y], alpha=float(act.negative_slope))]


def layer_graph(module: nn.Module, act: nn.Module | None, input_shape: Sequence[int], c_in: int, c_out: int) -> bytes:
    """An ONNX graph of ``module`` narrowed to ``c_in`` -> ``c_out`` (random weights), and ``act``."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    shape = [int(d) for d in input_shape]
    inits = [numpy_helper.from_array(np.zeros((), np.float32), "zero"),
             numpy_helper.from_array(np.full((), 6.0, np.float32), "six")]
    if isinstance(module, nn.Linear):
        shape = [int(np.prod(shape[:-1])), c_in]
        inits += [numpy_helper.from_array(rng.standard_normal((c_out, c_in)).astype(np.float32) * 0.01, "w"),
                  numpy_helper.from_array(np.zeros(c_out, np.float32), "b")]
        nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["z"], transB=1)]
    else:
        shape[1] = c_in
        groups = c_in if entry_op(module) == "depthwise" else 1
        kernel = list(module.kernel_size)
        inits += [
            numpy_helper.from_array(
                rng.standard_normal([c_out, c_in // groups] + kernel).astype(np.float32) * 0.01, "w"
            ),
            numpy_helper.from_array(np.zeros(c_out, np.float32), "b"),
        ]
        attrs = dict(kernel_shape=kernel, strides=list(module.stride), dilations=list(module.dilation), group=groups)
        if isinstance(module.padding, str):
            attrs["auto_pad"] = "SAME_UPPER" if module.padding == "same" else "VALID"
        else:
            attrs["pads"] = list(module.padding) * 2
        nodes = [helper.make_node("Conv", ["x", "w", "b"], ["z"], **attrs)]
    nodes += _onnx_activation(act, "z", "y")
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def roi_align_graph(feature_shape: Sequence[int], channels: int, rois: int, output_size: Sequence[int],
                    sampling_ratio: int, spatial_scale: float) -> bytes:
    """An ONNX graph of RoIAlign on one feature level narrowed to ``channels``: ``rois`` boxes
    (seeded, inside the image) pooled to ``output_size``, as a two-stage detector's box head reads."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    _, _, h, w = [int(d) for d in feature_shape]
    image_h, image_w = h / spatial_scale, w / spatial_scale
    corners = rng.random((rois, 2, 2)) * np.array([image_w, image_h])
    boxes = np.concatenate([corners.min(1), corners.max(1)], axis=1).astype(np.float32)
    inits = [numpy_helper.from_array(boxes, "rois"), numpy_helper.from_array(np.zeros(rois, np.int64), "index")]
    node = helper.make_node("RoiAlign", ["x", "rois", "index"], ["y"], mode="avg", output_height=int(output_size[0]),
                            output_width=int(output_size[1]), sampling_ratio=max(int(sampling_ratio), 0),
                            spatial_scale=float(spatial_scale), coordinate_transformation_mode="half_pixel")
    graph = helper.make_graph(
        [node],
        "roi_align",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, h, w])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _ort_session(graph: bytes | str | Path, threads: int):
    from detprune.runtime.ort import ort_session

    return ort_session(graph, threads)


def time_interleaved(runners: Sequence[Callable[[], object]], warmup: int, runs: int) -> list[float]:
    """Median ms of each runner, every round running each once (:func:`interleaved_samples`)."""
    from detprune.runtime import interleaved_samples

    return [float(np.median(s)) for s in interleaved_samples(runners, warmup, runs)]


def _ort_runner(graph, threads: int, shape: Sequence[int]):
    from detprune.runtime.ort import ort_runner

    return ort_runner(graph, threads, shape)


def _time_layer_ort(module, act, input_shape, grid_in, grid_out, threads, warmup, runs) -> np.ndarray:
    runners, index = [], []
    for i, c_in in enumerate(grid_in):
        for j, c_out in enumerate(grid_out):
            shape = list(input_shape)
            if isinstance(module, nn.Linear):
                shape = [int(np.prod(shape[:-1])), c_in]
            else:
                shape[1] = c_in
            runners.append(_ort_runner(layer_graph(module, act, input_shape, c_in, c_out), threads, shape))
            index.append((i, j))
    ms = np.zeros((len(grid_in), len(grid_out)))
    for (i, j), t in zip(index, time_interleaved(runners, warmup, runs)):
        ms[i, j] = t
    return ms


def _time_layer_cuda(module, act, input_shape, grid_in, grid_out, warmup, runs) -> np.ndarray:
    from detprune.runtime import measure_latency

    ms = np.zeros((len(grid_in), len(grid_out)))
    for i, c_in in enumerate(grid_in):
        for j, c_out in enumerate(grid_out):
            if isinstance(module, nn.Linear):
                layer, shape = nn.Linear(c_in, c_out), [int(np.prod(input_shape[:-1])), c_in]
            else:
                groups = c_in if entry_op(module) == "depthwise" else 1
                layer = nn.Conv2d(
                    c_in, c_out, module.kernel_size, module.stride, module.padding, module.dilation, groups
                )
                shape = [input_shape[0], c_in, *input_shape[2:]]
            block = nn.Sequential(layer, copy.deepcopy(act)) if act is not None else layer
            ms[i, j] = measure_latency("torch-cuda", block, shape, warmup, runs).median_ms
    return ms


@dataclass
class RoiRider:
    """RoIAlign that reads a feature level of ``channels`` and feeds the layer ``reader``: its time
    scales with the FPN width x the proposals, and it is no conv or linear, so the table times it
    on its own and prices it with the reader's input width."""

    name: str
    channels: int
    movable: bool
    feature_shape: list[int]
    rois: int
    output_size: list[int]
    sampling_ratio: int
    spatial_scale: float


def roi_riders(adapter, model: nn.Module, coupled) -> list[RoiRider]:
    """The RoIAlign of a two-stage detector (``adapter.roi_pool_points``), from the traced calls:
    the finest level read (the output of the first FPN layer), the proposals the reader sees."""
    points = adapter.roi_pool_points(model)
    if not points:
        return []
    from detprune.pruning.latency_table import movable_sides

    by_module = {id(call.module): (name, call) for name, call in call_names(coupled)}
    movable = movable_sides(coupled)
    riders = []
    for reader, level, pool in points:
        if id(reader) not in by_module or id(level) not in by_module:
            continue
        name, reader_call = by_module[id(reader)]
        _, level_call = by_module[id(level)]
        feature = [int(d) for d in level_call.output_shape]
        image_h = int(coupled.calls[0].input_shape[2]) if coupled.calls else feature[2]
        riders.append(
            RoiRider(
                name=name + RIDER_SUFFIX,
                channels=feature[1],
                movable=level_call.node is not None and (id(level_call.node), "out") in movable,
                feature_shape=feature,
                rois=int(reader_call.input_shape[0]),
                output_size=[
                    int(s)
                    for s in (
                        pool.output_size if isinstance(pool.output_size, (tuple, list)) else (pool.output_size,) * 2
                    )
                ],
                sampling_ratio=int(pool.sampling_ratio),
                spatial_scale=feature[2] / image_h,
            )
        )
    return riders


# --- the whole model ---------------------------------------------------------------------------------


def _artifacts(adapter, models: dict[str, nn.Module], imgsz, backend, work: Path) -> dict:
    from detprune.runtime import prepare

    return {tag: prepare(backend, adapter.export_module(model), adapter.example_inputs(model, imgsz), work, tag)
            for tag, model in models.items()}


def time_models(adapter, models: dict[str, nn.Module], imgsz, backend, threads, warmup, runs) -> dict[str, float]:
    """Median ms of each whole model; interleaved round by round on ONNX Runtime."""
    from detprune.runtime import measure_latency

    first = next(iter(models.values()))
    shape = list(adapter.example_inputs(first, imgsz).shape)
    with tempfile.TemporaryDirectory(prefix="detprune-latency-table-") as work:
        artifacts = _artifacts(adapter, models, imgsz, backend, Path(work))
        if backend == "onnxruntime":
            runners = [_ort_runner(path, threads, shape) for path in artifacts.values()]
            return dict(zip(artifacts, time_interleaved(runners, warmup, runs)))
        return {tag: measure_latency(backend, a, shape, warmup, runs).median_ms for tag, a in artifacts.items()}


# --- building, caching, checking -------------------------------------------------------------------


def device_name(backend: str) -> str:
    from detprune.runtime import cpu_name

    if backend == "onnxruntime":
        return cpu_name()
    return f"cuda: {torch.cuda.get_device_name()}"


def latency_table(adapter, model: nn.Module, *, backend: str = "onnxruntime", imgsz=640, threads: int | None = None,
                  batch: int = 1, points: int = DEFAULT_POINTS, round_to: int = 8, warmup: int = 3, runs: int = 15,
                  check_cuts: int = 10, check_runs: int = 10, cache: str | Path | None = None, seed: int = 0,
                  say: Callable[[str], None] | None = None) -> LatencyTable:
    """The table of ``model``'s architecture on ``backend``: read from the cache, else measured there.

    ``model`` must be prepared (``adapter.prepare_for_pruning``) and is not changed. A table
    built here is checked on ``check_cuts`` random cuts (0: none) and the error printed.
    """
    from detprune.runtime import default_threads
    from detprune.pruning.groups import enumerate_groups
    from detprune.pruning.latency_target import check_backend
    from detprune.pruning.pruner import trace_forward

    say = say or print
    check_backend(backend)
    if backend not in TABLE_BACKENDS:
        raise UnsupportedError(f"latency tables are measured on {' or '.join(TABLE_BACKENDS)}; for {backend}, "
                               "use --latency-search flops (whole engines timed per candidate)")
    threads = int(threads or default_threads()) if backend == "onnxruntime" else None
    model = copy.deepcopy(model).cpu().eval()
    example = adapter.example_inputs(model, imgsz, batch_size=batch)
    coupled = enumerate_groups(model, example, adapter.protected_layers(model), trace_forward(adapter, model))
    device = device_name(backend)
    riders = roi_riders(adapter, model, coupled)
    key = table_key(coupled, backend, device, example.shape, threads, points, round_to, [r.name for r in riders])
    path = cache_dir(cache) / f"{key}.json"
    if path.is_file():
        table = LatencyTable.load(path)
        say(f"reusing {table.summary()} ({path})")
        return table
    table = _measure_table(
        coupled, model, key, backend, device, example, threads, points, round_to, warmup, runs, riders
    )
    table = calibrate_and_check(adapter, model, table, imgsz=imgsz, cuts=check_cuts, runs=check_runs, seed=seed,
                                round_to=round_to)
    table.save(path)
    say(f"built {table.summary()} ({path})")
    return table


def _measure_table(coupled, model, key, backend, device, example, threads, points, round_to, warmup, runs, riders=()):
    from detprune.pruning.latency_table import movable_sides
    from detprune.utils.progress import progress_counter

    movable = movable_sides(coupled)
    entries = call_names(coupled)
    layers = {}
    bar = progress_counter(len(entries), desc=f"latency table ({backend})")
    for name, call in entries:
        m = call.module
        op = entry_op(m)
        c_in = int(m.in_features if isinstance(m, nn.Linear) else m.in_channels)
        c_out = int(m.out_features if isinstance(m, nn.Linear) else m.out_channels)
        moves_out = call.node is not None and (id(call.node), "out") in movable
        moves_in = call.node is not None and (id(call.node), "in") in movable
        grid_out = grid_widths(c_out, moves_out or (op == "depthwise" and moves_in), points, round_to)
        grid_in = grid_out if op == "depthwise" else grid_widths(c_in, moves_in, points, round_to)
        act = activation_after(model, name.rsplit("#", 1)[0]) if "#" in name else None
        if op == "depthwise":  # one axis: time the diagonal, spread over the square grid
            ms = _square(
                [_one(backend, m, act, call.input_shape, [c], [c], threads, warmup, runs)[0, 0] for c in grid_out]
            )
        else:
            ms = _one(backend, m, act, call.input_shape, grid_in, grid_out, threads, warmup, runs)
        layers[name] = LayerTiming(
            op, c_in, c_out, list(map(int, grid_in)), list(map(int, grid_out)), monotone(ms).tolist()
        )
        bar.update()
    bar.close()
    for rider in riders:
        layers[rider.name] = _time_rider(rider, backend, threads, points, round_to, warmup, runs)
    return LatencyTable(key, backend, device, [int(d) for d in example.shape], threads, layers)


def _time_rider(rider, backend: str, threads, points: int, round_to: int, warmup: int, runs: int) -> LayerTiming:
    """RoIAlign at the grid widths of the feature level it reads (one axis, like a depthwise layer)."""
    if backend != "onnxruntime":
        raise UnsupportedError(f"RoIAlign is timed on onnxruntime only; a {backend} table of a two-stage detector "
                               "would miss it: use --latency-search flops")
    grid = grid_widths(rider.channels, rider.movable, points, round_to)
    runners = [
        _ort_runner(
            roi_align_graph(
                rider.feature_shape, c, rider.rois, rider.output_size, rider.sampling_ratio, rider.spatial_scale
            ),
            threads,
            [1, c, *rider.feature_shape[2:]],
        )
        for c in grid
    ]
    ms = _square(time_interleaved(runners, warmup, runs))
    return LayerTiming(
        "roi_align", rider.channels, rider.channels, list(map(int, grid)), list(map(int, grid)), monotone(ms).tolist()
    )


def _square(diagonal: Sequence[float]) -> np.ndarray:
    """A one-axis timing (input width = output width) spread over the square grid the table reads."""
    n = len(diagonal)
    return np.array([[diagonal[max(i, j)] for j in range(n)] for i in range(n)])


def _one(backend, module, act, input_shape, grid_in, grid_out, threads, warmup, runs) -> np.ndarray:
    if backend == "onnxruntime":
        return _time_layer_ort(module, act, input_shape, grid_in, grid_out, threads, warmup, runs)
    return _time_layer_cuda(module, act, input_shape, grid_in, grid_out, warmup, runs)


UNIFORM_CALIBRATION = (0.8, 0.6, 0.4, 0.25)  # every group kept at this fraction: cuts that span the range


def cut_copy(adapter, model: nn.Module, imgsz, rng: np.random.Generator, keep: float | None = None, round_to: int = 8):
    """A copy of ``model`` with every prunable group cut (random channels) to a random allowed width,
    or with ``keep``, to the allowed width nearest ``keep`` of it; with what prices the cut:
    (cut model, (coupled groups, cost model, removal))."""
    from detprune.pruning.allocation import Limits, snap_kept
    from detprune.pruning.flops import CostModel, measure
    from detprune.pruning.groups import enumerate_groups
    from detprune.pruning.pruner import apply_plan, trace_forward

    cut = copy.deepcopy(model)
    example = adapter.example_inputs(cut, imgsz)
    forward_fn = trace_forward(adapter, cut)
    coupled = enumerate_groups(cut, example, adapter.protected_layers(cut), forward_fn)
    limits = Limits(round_to=round_to)
    orders, removal = {}, {}
    for g in coupled.groups:
        orders[g.index] = rng.permutation(g.prunable).astype(np.int64)
        allowed = limits.allowed_kept(g.size, len(g.prunable))
        kept = rng.choice(allowed) if keep is None else snap_kept(allowed, keep * g.size)
        removal[g.index] = int(g.size - kept)
    cost_model = CostModel(coupled, measure(cut, example, forward_fn), orders)
    prices = (coupled, cost_model, dict(removal))
    apply_plan(coupled, {g: orders[g][:n] for g, n in removal.items() if n})
    return cut, prices


def calibrate_and_check(adapter, model: nn.Module, table: LatencyTable, *, imgsz, cuts: int = 10, runs: int = 10,
                        seed: int = 0, round_to: int = 8) -> LatencyTable:
    """Fit the table's ``scale`` and ``offset_ms`` on whole models, then check it on random cuts.

    In one interleaved session: the original, cuts keeping every group at the fractions of
    :data:`UNIFORM_CALIBRATION`, and ``cuts`` random cuts. ``measured = scale x layers + offset``
    is fitted by least squares on the original and the uniform cuts only; the random cuts,
    which the fit never saw, give the error recorded in ``table.check``.
    """
    rng = np.random.default_rng(seed)
    models, layers_ms = {"original": model}, {"original": table.layers_full_ms}
    plans = [(f"uniform{keep:g}", keep) for keep in UNIFORM_CALIBRATION] + [(f"random{k}", None) for k in range(cuts)]
    for tag, keep in plans:
        cut, (coupled, cost_model, removal) = cut_copy(adapter, model, imgsz, rng, keep, round_to)
        models[tag] = cut
        layers_ms[tag] = LatencyCost(table, coupled, cost_model).layers_ms(removal)
    measured = time_models(adapter, models, imgsz, table.backend, table.threads, 2, runs)
    fit = ["original"] + [t for t, keep in plans if keep is not None]
    x = np.array([layers_ms[t] for t in fit])
    y = np.array([measured[t] for t in fit])
    scale, offset = np.polyfit(x, y, 1)
    if scale <= 0:  # the layers do not explain the model's time: fall back to a fixed remainder
        scale, offset = 1.0, float(measured["original"] - table.layers_full_ms)
    table.scale, table.offset_ms = float(scale), float(offset)
    table.calibration = {t: {"layers_ms": layers_ms[t], "measured_ms": measured[t]} for t in fit}
    held = [t for t, keep in plans if keep is None]
    predicted = [table.offset_ms + table.scale * layers_ms[t] for t in held]
    table.check = relative_errors(predicted, [measured[t] for t in held])
    table.check["rows"] = [{"cut": t, "predicted_ms": p, "measured_ms": measured[t]} for t, p in zip(held, predicted)]
    return table
