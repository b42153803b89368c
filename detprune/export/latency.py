"""Inference latency, measured the same way on every backend.

Each backend warms up, then times ``runs`` single inferences one after another and reports
the median, 90th and 99th percentiles and the throughput at the median. Percentiles rather
than the mean, because a detector on a shared machine or a throttling Jetson has a long tail.

- ``onnxruntime``: ONNX Runtime on the CPU, with an explicit thread count (recorded), wall
  clock per run. Available everywhere.
- ``torch-cuda``: PyTorch in FP16 on a GPU, the forward pass captured once in a CUDA graph
  and replayed, so Python overhead is not timed; CUDA events on the stream time each replay.
- ``tensorrt``: a serialized engine, CUDA events on the engine's own stream.
"""

from __future__ import annotations

import copy
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from detprune.errors import BadInputError, UnsupportedError

BACKENDS = ("onnxruntime", "torch-cuda", "tensorrt")


@dataclass
class LatencyStats:
    """Latency of one model on one backend, in milliseconds per inference of one batch."""

    backend: str
    device: str
    input_shape: list[int]
    precision: str
    warmup: int
    runs: int
    median_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    throughput: float  # images per second at the median latency
    threads: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float], *, backend: str, device: str, input_shape: Sequence[int],
                     precision: str, warmup: int, threads: int | None = None, extra: dict | None = None) -> "LatencyStats":
        times = np.asarray(samples_ms, dtype=np.float64)
        if times.size == 0 or not np.all(np.isfinite(times)) or np.any(times < 0):
            raise BadInputError(f"{backend}: no valid timings were recorded")
        median = float(np.median(times))
        batch = int(input_shape[0]) if len(input_shape) else 1
        return cls(
            backend=backend,
            device=device,
            input_shape=[int(d) for d in input_shape],
            precision=precision,
            warmup=int(warmup),
            runs=int(times.size),
            median_ms=median,
            p90_ms=float(np.percentile(times, 90)),
            p99_ms=float(np.percentile(times, 99)),
            mean_ms=float(times.mean()),
            min_ms=float(times.min()),
            max_ms=float(times.max()),
            throughput=batch * 1000.0 / median if median > 0 else float("inf"),
            threads=threads,
            extra=dict(extra or {}),
        )

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"{self.backend} ({self.precision}, {self.device}): median {self.median_ms:.2f} ms, "
            f"p90 {self.p90_ms:.2f} ms, p99 {self.p99_ms:.2f} ms, {self.throughput:.1f} img/s"
        )


def measure_latency(backend: str, model_or_path, input_shape: Sequence[int], warmup: int = 10, runs: int = 100,
                    *, threads: int | None = None) -> LatencyStats:
    """Time ``model_or_path`` on ``backend`` with an input of ``input_shape`` (B, C, H, W).

    ``model_or_path`` is an ONNX file or an ``nn.Module`` (exported to a temporary ONNX file)
    for ``onnxruntime``, an ``nn.Module`` for ``torch-cuda`` and an engine file for ``tensorrt``.
    """
    if backend not in BACKENDS:
        raise BadInputError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if warmup < 0 or runs < 1:
        raise BadInputError(f"need warmup >= 0 and runs >= 1, got {warmup} and {runs}")
    shape = [int(d) for d in input_shape]
    if backend == "onnxruntime":
        return _onnxruntime(model_or_path, shape, warmup, runs, threads)
    if backend == "torch-cuda":
        return _torch_cuda(model_or_path, shape, warmup, runs)
    return _tensorrt(model_or_path, shape, warmup, runs)


# --- ONNX Runtime (CPU) --------------------------------------------------------------------------


def default_threads() -> int:
    """The CPU cores this process may run on (its affinity, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _onnxruntime(model_or_path, shape, warmup, runs, threads) -> LatencyStats:
    with tempfile.TemporaryDirectory(prefix="detprune-latency-") as work:
        path = _as_onnx(model_or_path, shape, Path(work))
        return onnxruntime_side_by_side({"model": path}, shape, warmup, runs, threads=threads)["model"]


def interleaved_samples(runners: Sequence[Callable[[], object]], warmup: int, runs: int) -> list[list[float]]:
    """Per runner, the ms of each of ``runs`` rounds, every round running each runner once.

    Each round starts one runner further on, so no runner always follows the same one.
    """
    for _ in range(warmup):
        for runner in runners:
            runner()
    samples: list[list[float]] = [[] for _ in runners]
    for round_ in range(runs):
        first = round_ % len(runners) if runners else 0
        for k in [*range(first, len(runners)), *range(first)]:
            start = time.perf_counter()
            runners[k]()
            samples[k].append((time.perf_counter() - start) * 1000.0)
    return samples


def onnxruntime_side_by_side(paths: Mapping[str, str | Path], input_shape: Sequence[int], warmup: int = 10,
                             runs: int = 100, *, threads: int | None = None) -> dict[str, LatencyStats]:
    """Time several ONNX graphs on ONNX Runtime in turn: each round runs every graph once.

    Interleaving makes the background load of a shared machine (or a CPU that heats up and
    slows down) fall on all the models alike, so their ratios stay meaningful where timing
    them one after another would compare different moments (:func:`interleaved_samples`).
    """
    from detprune.export.onnx import OnnxModel, graph_precision, load_onnx

    threads = int(threads or default_threads())
    shape = [int(d) for d in input_shape]
    runners, precisions = {}, {}
    for name, path in paths.items():
        precisions[name] = graph_precision(load_onnx(path, full_check=False))
        runners[name] = OnnxModel(path, threads=threads)
        fixed = runners[name].input_shape[0]
        if isinstance(fixed, int) and fixed != shape[0]:
            raise BadInputError(f"{path}: the graph has a fixed batch of {fixed}, asked for {shape[0]}")
    array = np.random.default_rng(0).random(shape, dtype=np.float32)
    timed = interleaved_samples([lambda r=runner: r(array) for runner in runners.values()], warmup, runs)
    samples = dict(zip(runners, timed))
    extra = {"interleaved_with": sorted(runners)} if len(runners) > 1 else {}
    return {
        name: LatencyStats.from_samples(samples[name], backend="onnxruntime", device=cpu_name(), input_shape=shape,
                                        precision=precisions[name], warmup=warmup, threads=threads, extra=extra)
        for name in runners
    }


def _as_onnx(model_or_path, shape, work: Path) -> Path:
    if isinstance(model_or_path, (str, Path)):
        return Path(model_or_path)
    import torch

    from detprune.export.onnx import export_onnx

    path = work / "model.onnx"
    export_onnx(model_or_path, torch.rand(shape), path, check=False)
    return path


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return "cpu: " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu: " + (platform.processor() or platform.machine())


# --- PyTorch on CUDA, FP16, CUDA graphs ------------------------------------------------------------


def _torch_cuda(module, shape, warmup, runs) -> LatencyStats:
    import torch

    if not isinstance(module, torch.nn.Module):
        raise BadInputError("the torch-cuda backend times an nn.Module; load the checkpoint first")
    if not torch.cuda.is_available():
        raise UnsupportedError("the torch-cuda backend needs a CUDA GPU; PyTorch sees none (torch.cuda.is_available() is False)")
    device = torch.device("cuda")
    model = copy.deepcopy(module).eval().to(device).half()
    static_input = torch.rand(shape, device=device, dtype=torch.float16)
    replay, _, captured, reason = capture_cuda_graph(model, static_input)
    stream = torch.cuda.current_stream()
    with torch.no_grad():
        for _ in range(warmup):
            replay()
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(runs)]
        for start, end in events:
            start.record(stream)
            replay()
            end.record(stream)
    torch.cuda.synchronize()
    samples = [start.elapsed_time(end) for start, end in events]
    extra = {"cuda_graph": captured}
    if reason:
        extra["cuda_graph_failure"] = reason
    return LatencyStats.from_samples(samples, backend="torch-cuda", device=f"cuda: {torch.cuda.get_device_name()}",
                                     input_shape=shape, precision="fp16", warmup=warmup, extra=extra)


def capture_cuda_graph(model, static_input):
    """Capture one forward pass of ``model`` on ``static_input`` in a CUDA graph.

    Returns (replay, output, captured, failure): calling ``replay()`` reruns the pass on whatever
    ``static_input`` holds and refreshes ``output`` in place. A model that cannot be captured
    (host synchronisation, data-dependent control flow) falls back to eager calls, and
    ``failure`` says why.
    """
    import torch

    with torch.no_grad():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # allocations and lazy initialisation must precede capture
            for _ in range(3):
                model(static_input)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                output = model(static_input)
        except Exception as err:
            torch.cuda.synchronize()
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            return (lambda: model(static_input)), None, False, first
    return graph.replay, output, True, None


# --- TensorRT ----------------------------------------------------------------------------------------


def _tensorrt(engine_path, shape, warmup, runs) -> LatencyStats:
    from detprune.export.tensorrt import load_engine

    if not isinstance(engine_path, (str, Path)):
        raise BadInputError("the tensorrt backend times an engine file; build one with 'detprune engine'")
    engine = load_engine(engine_path)
    samples = engine.time_runs(shape, warmup, runs)
    info = engine.info
    return LatencyStats.from_samples(
        samples, backend="tensorrt", device=f"cuda: {engine.gpu.name}", input_shape=shape,
        precision=info.precision if info else "unknown", warmup=warmup,
        extra={"tensorrt_version": info.tensorrt_version if info else None},
    )
