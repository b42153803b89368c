"""Latency backends: prepare an artifact, time it (ONNX Runtime, PyTorch on CUDA, TensorRT).

Below both pruning and deployment: a latency-aware allocation asks this package for timings
and never imports :mod:`detprune.export`. Backends register by name
(:func:`~detprune.runtime.base.register_backend`); ``names()`` lists them for the CLI.

    measure_latency("onnxruntime", "model.onnx", (1, 3, 640, 640))
    artifact = prepare("tensorrt", module, example, work_dir)   # ONNX -> engine
    get_backend("tensorrt").time(artifact, (1, 3, 640, 640), warmup=10, runs=100)
"""

from detprune.runtime.base import (
    LatencyBackend,
    check_backend,
    get_backend,
    measure_latency,
    names,
    prepare,
    register_backend,
    time_side_by_side,
)
from detprune.runtime.stats import LatencyStats, cpu_name, default_threads, interleaved_samples

__all__ = [
    "LatencyBackend",
    "LatencyStats",
    "check_backend",
    "cpu_name",
    "default_threads",
    "get_backend",
    "interleaved_samples",
    "measure_latency",
    "names",
    "prepare",
    "register_backend",
    "time_side_by_side",
]
