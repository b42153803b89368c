"""One protocol for every model of a run: accuracy, cost and CPU latency, measured the same way."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Mapping, Sequence

from torch import nn

from detprune.adapters.base import DetectorAdapter
from detprune.data.batch import as_hw
from detprune.data.types import DetectionSet
from detprune.evaluation.report import ModelSummary
from detprune.pruning.flops import measure
from detprune.pruning.pruner import conv_channels, trace_forward


def model_cost(adapter: DetectorAdapter, model: nn.Module, imgsz: int | Sequence[int]):
    """Params and FLOPs on the adapter's example input at ``imgsz``."""
    return measure(model, adapter.example_inputs(model, imgsz), trace_forward(adapter, model))


def cpu_latency(
    adapter: DetectorAdapter, model: nn.Module, imgsz: int | Sequence[int], *, runs: int, onnx_path: Path | None = None
):
    """ONNX Runtime CPU latency (median, p90 over warmed runs) of the exported model at batch 1.

    The graph is exported for timing only, without the output comparison: a detector whose
    scores are nearly tied (early in training) can order its top-k differently on two runtimes
    without being wrong. ``detprune export`` is where parity is checked and reported.
    """
    from detprune.runtime import measure_latency, prepare

    example = adapter.example_inputs(model, imgsz, batch_size=1)
    with tempfile.TemporaryDirectory() as tmp:
        path = prepare("onnxruntime", adapter.export_module(model), example, tmp, path=onnx_path)
        return measure_latency("onnxruntime", path, list(example.shape), warmup=max(3, runs // 10), runs=runs)


def interleaved_cpu_latency(
    adapter: DetectorAdapter,
    models: Mapping[str, nn.Module],
    imgsz: int | Sequence[int],
    *,
    runs: int,
    onnx_paths: Mapping[str, Path],
) -> dict[str, dict]:
    """ONNX Runtime CPU latency of several models at batch 1, timed round by round.

    Each round runs every model once, so the load of a shared machine falls on all of them
    alike, where timings taken minutes apart compare different moments. Returns {name: report
    latency entry}; each graph is written to its path.
    """
    from detprune.runtime import prepare, time_side_by_side

    shape: list[int] = []
    for name, model in models.items():
        example = adapter.example_inputs(model, imgsz, batch_size=1)
        prepare(
            "onnxruntime",
            adapter.export_module(model),
            example,
            Path(onnx_paths[name]).parent,
            path=Path(onnx_paths[name]),
        )
        shape = list(example.shape)
    stats = time_side_by_side(
        "onnxruntime", {name: onnx_paths[name] for name in models}, shape, warmup=max(3, runs // 10), runs=runs
    )
    return {
        name: {
            "median_ms": s.median_ms,
            "p90_ms": s.p90_ms,
            "backend": f"onnxruntime-cpu ({s.threads} threads, interleaved)",
        }
        for name, s in stats.items()
    }


def summarise(
    adapter: DetectorAdapter,
    model: nn.Module,
    val: DetectionSet,
    *,
    imgsz: int | Sequence[int],
    batch_size: int = 8,
    latency_runs: int = 30,
    onnx_path: Path | None = None,
    info: dict | None = None,
    eval_options: dict | None = None,
) -> ModelSummary:
    """Evaluate ``model`` on ``val`` and measure its cost and CPU latency into a report entry.

    ``eval_options`` (conf, iou, max_det, letterbox, kitti_protocol) pass to ``adapter.evaluate``.
    """
    from detprune.workflow.imgsz import input_shape

    metrics = adapter.evaluate(model, val, imgsz=imgsz, batch_size=batch_size, **(eval_options or {}))
    shape = input_shape(val, imgsz, (eval_options or {}).get("letterbox", "square"))  # rect: the canvas of its frames
    cost = model_cost(adapter, model, shape)
    latency = None
    if latency_runs > 0:
        stats = cpu_latency(adapter, model, shape, runs=latency_runs, onnx_path=onnx_path)
        latency = {
            "median_ms": stats.median_ms,
            "p90_ms": stats.p90_ms,
            "backend": f"onnxruntime-cpu ({stats.threads} threads)",
        }
    return ModelSummary(
        metrics=metrics,
        params=cost.params,
        flops=cost.flops,
        latency=latency,
        channels=conv_channels(model),
        info={
            "imgsz": list(as_hw(imgsz)),
            "input_shape": list(shape),
            **({"evaluation": dict(eval_options)} if eval_options else {}),
            **(info or {}),
        },
    )
