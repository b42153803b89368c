"""ONNX Runtime on the CPU, with an explicit thread count (recorded), wall clock per run.

Available everywhere. The artifact is an ONNX graph written by :func:`detprune.export.onnx.export_onnx`
(the exporter's own writer, so what is timed is what is deployed).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from detprune.errors import BadInputError
from detprune.runtime.base import LatencyBackend, register_backend
from detprune.runtime.stats import LatencyStats, cpu_name, default_threads, interleaved_samples


@register_backend
class OnnxRuntimeBackend(LatencyBackend):
    """ONNX Runtime, CPU execution provider; several graphs are timed round by round."""

    name = "onnxruntime"

    def prepare(self, module, example, work: Path, tag: str = "model", *, path: Path | None = None,
                check: bool = False, **options: Any) -> Path:
        from detprune.export.onnx import export_onnx

        return export_onnx(module, example, path or Path(work) / f"{tag}.onnx", check=check).path

    def time(self, artifact, input_shape: Sequence[int], warmup: int, runs: int, *,
             threads: int | None = None) -> LatencyStats:
        if isinstance(artifact, (str, Path)):
            return onnxruntime_side_by_side({"model": artifact}, input_shape, warmup, runs, threads=threads)["model"]
        import torch

        with tempfile.TemporaryDirectory(prefix="detprune-latency-") as work:  # a module: exported for timing
            path = self.prepare(artifact, torch.rand([int(d) for d in input_shape]), Path(work))
            return onnxruntime_side_by_side({"model": path}, input_shape, warmup, runs, threads=threads)["model"]

    def time_side_by_side(self, artifacts: Mapping[str, Any], input_shape: Sequence[int], warmup: int, runs: int, *,
                          threads: int | None = None) -> dict[str, LatencyStats]:
        return onnxruntime_side_by_side(artifacts, input_shape, warmup, runs, threads=threads)

    def device(self) -> str:
        return cpu_name()


def ort_session(graph: bytes | str | Path, threads: int):
    """A CPU ``InferenceSession`` with the exporter's session options (no thread spinning)."""
    import onnxruntime as ort

    from detprune.export.onnx import session_options

    source = graph if isinstance(graph, bytes) else str(graph)
    return ort.InferenceSession(source, sess_options=session_options(threads), providers=["CPUExecutionProvider"])


def ort_runner(graph, threads: int, shape: Sequence[int]):
    """A no-argument callable that runs ``graph`` once on a fixed random input of ``shape``."""
    session = ort_session(graph, threads)
    name = session.get_inputs()[0].name
    array = np.random.default_rng(0).random([int(d) for d in shape], dtype=np.float32)
    return lambda: session.run(None, {name: array})


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
