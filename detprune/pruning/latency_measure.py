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
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from detprune.errors import UnsupportedError
from detprune.pruning.latency_table import (
    DEFAULT_POINTS,
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
        inits += [numpy_helper.from_array(rng.standard_normal([c_out, c_in // groups] + kernel).astype(np.float32) * 0.01, "w"),
                  numpy_helper.from_array(np.zeros(c_out, np.float32), "b")]
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


def _ort_session(graph: bytes | str | Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    source = graph if isinstance(graph, bytes) else str(graph)
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])


def time_interleaved(runners: Sequence[Callable[[], object]], warmup: int, runs: int) -> list[float]:
    """Median ms of each runner, every round running each once."""
    for _ in range(warmup):
        for r in runners:
            r()
    samples = [[] for _ in runners]
    for _ in range(runs):
        for k, r in enumerate(runners):
            start = time.perf_counter()
            r()
            samples[k].append((time.perf_counter() - start) * 1000.0)
    return [float(np.median(s)) for s in samples]


def _ort_runner(graph, threads: int, shape: Sequence[int]):
    session = _ort_session(graph, threads)
    name = session.get_inputs()[0].name
    array = np.random.default_rng(0).random([int(d) for d in shape], dtype=np.float32)
    return lambda: session.run(None, {name: array})


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
    from detprune.export.latency import measure_latency

    ms = np.zeros((len(grid_in), len(grid_out)))
    for i, c_in in enumerate(grid_in):
        for j, c_out in enumerate(grid_out):
            if isinstance(module, nn.Linear):
                layer, shape = nn.Linear(c_in, c_out), [int(np.prod(input_shape[:-1])), c_in]
            else:
                groups = c_in if entry_op(module) == "depthwise" else 1
                layer = nn.Conv2d(c_in, c_out, module.kernel_size, module.stride, module.padding, module.dilation, groups)
                shape = [input_shape[0], c_in, *input_shape[2:]]
            block = nn.Sequential(layer, copy.deepcopy(act)) if act is not None else layer
            ms[i, j] = measure_latency("torch-cuda", block, shape, warmup, runs).median_ms
    return ms


# --- the whole model ---------------------------------------------------------------------------------


def _artifacts(adapter, models: dict[str, nn.Module], imgsz, backend, work: Path) -> dict:
    from detprune.export.onnx import export_onnx

    out = {}
    for tag, model in models.items():
        module = adapter.export_module(model)
        if backend == "torch-cuda":
            out[tag] = module
        else:
            out[tag] = export_onnx(module, adapter.example_inputs(model, imgsz), work / f"{tag}.onnx", check=False).path
    return out


def time_models(adapter, models: dict[str, nn.Module], imgsz, backend, threads, warmup, runs) -> dict[str, float]:
    """Median ms of each whole model; interleaved round by round on ONNX Runtime."""
    from detprune.export.latency import measure_latency

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
    from detprune.export.latency import cpu_name

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
    from detprune.export.latency import default_threads
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
    key = table_key(coupled, backend, device, example.shape, threads, points, round_to)
    path = cache_dir(cache) / f"{key}.json"
    if path.is_file():
        table = LatencyTable.load(path)
        say(f"reusing {table.summary()} ({path})")
        return table
    table = _measure_table(coupled, model, key, backend, device, example, threads, points, round_to, warmup, runs)
    table = calibrate_and_check(adapter, model, table, imgsz=imgsz, cuts=check_cuts, runs=check_runs, seed=seed,
                                round_to=round_to)
    table.save(path)
    say(f"built {table.summary()} ({path})")
    return table


def _measure_table(coupled, model, key, backend, device, example, threads, points, round_to, warmup, runs):
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
            diag = [_one(backend, m, act, call.input_shape, [c], [c], threads, warmup, runs)[0, 0] for c in grid_out]
            ms = np.array([[diag[max(i, j)] for j in range(len(grid_out))] for i in range(len(grid_in))])
        else:
            ms = _one(backend, m, act, call.input_shape, grid_in, grid_out, threads, warmup, runs)
        layers[name] = LayerTiming(op, c_in, c_out, list(map(int, grid_in)), list(map(int, grid_out)), monotone(ms).tolist())
        bar.update()
    bar.close()
    return LatencyTable(key, backend, device, [int(d) for d in example.shape], threads, layers)


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
