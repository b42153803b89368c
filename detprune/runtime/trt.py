"""TensorRT: a serialized engine, CUDA events on the engine's own stream.

The artifact is an engine file built from the exporter's ONNX graph (FP16 by default; with
TensorRT 11's strongly typed networks the graph itself is converted to FP16 first).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from detprune.errors import BadInputError
from detprune.runtime.base import LatencyBackend, register_backend
from detprune.runtime.stats import LatencyStats


@register_backend
class TensorRTBackend(LatencyBackend):
    name = "tensorrt"
    needs_cuda = True

    def check(self) -> None:
        super().check()
        from detprune.export.tensorrt import import_tensorrt

        import_tensorrt()

    def prepare(self, module, example, work: Path, tag: str = "model", *, precision: str = "fp16",
                check: bool = False, **options: Any) -> Path:
        from detprune.export.onnx import export_onnx
        from detprune.export.precision import convert_fp16
        from detprune.export.tensorrt import build_engine, import_tensorrt, version_major

        work = Path(work)
        trt = import_tensorrt()
        path = export_onnx(module, example, work / f"{tag}.onnx", check=check).path
        # strongly typed: precision comes from the graph
        if precision == "fp16" and version_major(trt.__version__) >= 11:
            path = convert_fp16(path, work / f"{tag}.fp16.onnx").path
        engine = work / f"{tag}.engine"
        build_engine(path, engine, precision=precision, timing_cache=work / "timing.cache")
        return engine

    def time(self, artifact, input_shape: Sequence[int], warmup: int, runs: int, *,
             threads: int | None = None) -> LatencyStats:
        return _tensorrt(artifact, [int(d) for d in input_shape], warmup, runs)


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
