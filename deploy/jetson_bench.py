#!/usr/bin/env python3
"""Time a TensorRT engine on a Jetson (or any NVIDIA GPU) with TensorRT and numpy only.

Self-contained on purpose: a Jetson carries JetPack's TensorRT and numpy, rarely PyTorch,
never detprune. CUDA memory, streams and events come from cuda-python
(``pip install cuda-python``; ``cuda.bindings.runtime`` or the older ``cuda.cudart``) or,
failing that, from pycuda.

    # time an engine (built on this device), write the same JSON as detprune's latency.py
    python3 jetson_bench.py --engine model.engine --runs 500 --json latency.json
    # or build the engine here from the ONNX that 'detprune export' wrote, then time it
    python3 jetson_bench.py --onnx model.fp16.onnx --precision fp16 --engine model.engine

Engines are not portable across TensorRT versions or GPUs: build on the device that runs them.
The JSON records the L4T release (/etc/nv_tegra_release), the JetPack package version, the
TensorRT version, the power mode (``nvpmodel -q``) and whether ``jetson_clocks`` pinned the
clocks, since each of these changes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PRECISIONS = ("fp32", "fp16", "int8")


class BenchError(Exception):
    """Printed as one line; exit status 2."""


# --- latency record (the fields and rules of detprune.runtime.LatencyStats) -------------------


def latency_record(samples_ms, *, device: str, input_shape, precision: str, warmup: int,
                   extra: dict | None = None) -> dict:
    times = np.asarray(samples_ms, dtype=np.float64)
    if times.size == 0 or not np.all(np.isfinite(times)) or np.any(times < 0):
        raise BenchError("no valid timings were recorded")
    median = float(np.median(times))
    batch = int(input_shape[0]) if len(input_shape) else 1
    return {
        "backend": "tensorrt",
        "device": device,
        "input_shape": [int(d) for d in input_shape],
        "precision": precision,
        "warmup": int(warmup),
        "runs": int(times.size),
        "median_ms": median,
        "p90_ms": float(np.percentile(times, 90)),
        "p99_ms": float(np.percentile(times, 99)),
        "mean_ms": float(times.mean()),
        "min_ms": float(times.min()),
        "max_ms": float(times.max()),
        "throughput": batch * 1000.0 / median if median > 0 else float("inf"),
        "threads": None,
        "extra": dict(extra or {}),
    }


# --- the device ----------------------------------------------------------------------------------


def parse_tegra_release(text: str) -> str | None:
    """``# R36 (release), REVISION: 4.3, ...`` -> ``R36.4.3``."""
    match = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"R{match.group(1)}.{match.group(2)}" if match else None


def parse_nvpmodel(text: str) -> dict | None:
    """``NV Power Mode: MAXN\\n0`` -> ``{"name": "MAXN", "id": 0}``."""
    match = re.search(r"NV Power Mode:\s*(\S+)", text)
    if not match:
        return None
    rest = text[match.end():].split()
    return {"name": match.group(1), "id": int(rest[0]) if rest and rest[0].isdigit() else None}


def parse_jetson_clocks(text: str) -> bool | None:
    """True when every CPU and the GPU run pinned at their maximum (MinFreq == MaxFreq == CurrentFreq)."""
    rows = re.findall(r"MinFreq=(\d+)\s+MaxFreq=(\d+)\s+CurrentFreq=(\d+)", text)
    if not rows:
        return None
    return all(lo == hi == cur for lo, hi, cur in rows)


def _run(cmd: list[str]) -> str | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def jetson_environment(release_file: str = "/etc/nv_tegra_release") -> dict:
    """What on a Jetson changes latency; each field None where it cannot be read."""
    release = Path(release_file)
    l4t = parse_tegra_release(release.read_text()) if release.is_file() else None
    jetpack = _run(["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"]) if l4t else None
    power = parse_nvpmodel(_run(["nvpmodel", "-q"]) or "") if l4t else None
    clocks = parse_jetson_clocks(_run(["jetson_clocks", "--show"]) or "") if l4t else None
    return {"l4t": l4t, "jetpack": jetpack or None, "power_mode": power, "jetson_clocks": clocks}


# --- CUDA through cuda-python or pycuda --------------------------------------------------------------


class Cuda:
    """The few CUDA calls needed: memory, a stream, events. cuda-python first, pycuda second."""

    def __init__(self):
        try:
            try:
                from cuda.bindings import runtime as cudart
            except ImportError:
                from cuda import cudart
            self.rt, self.kind = cudart, "cuda-python"
        except ImportError:
            try:
                import pycuda.autoinit  # noqa: F401  (creates the context)
                import pycuda.driver as drv
            except ImportError:
                raise BenchError(
                    "needs cuda-python (pip install cuda-python) or pycuda for GPU memory and timing"
                ) from None
            self.rt, self.kind = drv, "pycuda"
        self.stream = self._call("cudaStreamCreate") if self.kind == "cuda-python" else self.rt.Stream()

    def _call(self, name, *args):
        err, *out = getattr(self.rt, name)(*args)
        if int(err) != 0:
            raise BenchError(f"CUDA {name} failed: {err}")
        return out[0] if len(out) == 1 else out

    def device(self) -> tuple[str, str]:
        if self.kind == "pycuda":
            dev = self.rt.Context.get_device()
            major, minor = dev.compute_capability()
            return dev.name(), f"{major}.{minor}"
        prop = self._call("cudaGetDeviceProperties", 0)
        name = prop.name.decode() if isinstance(prop.name, bytes) else str(prop.name)
        return name.strip("\x00 "), f"{prop.major}.{prop.minor}"

    def malloc(self, nbytes: int):
        return self._call("cudaMalloc", nbytes) if self.kind == "cuda-python" else self.rt.mem_alloc(nbytes)

    def handle(self) -> int:
        return int(self.stream) if self.kind == "cuda-python" else self.stream.handle

    def to_device(self, ptr, array: np.ndarray) -> None:
        if self.kind == "pycuda":
            self.rt.memcpy_htod(ptr, array)
        else:
            self._call("cudaMemcpy", ptr, array.ctypes.data, array.nbytes,
                       self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice)

    def event(self):
        return self._call("cudaEventCreate") if self.kind == "cuda-python" else self.rt.Event()

    def record(self, event) -> None:
        if self.kind == "pycuda":
            event.record(self.stream)
        else:
            self._call("cudaEventRecord", event, self.stream)

    def synchronize(self) -> None:
        if self.kind == "pycuda":
            self.stream.synchronize()
        else:
            self._call("cudaStreamSynchronize", self.stream)

    def elapsed_ms(self, start, end) -> float:
        return end.time_since(start) if self.kind == "pycuda" else float(self._call("cudaEventElapsedTime", start, end))


# --- TensorRT ----------------------------------------------------------------------------------------


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise BenchError(
            "TensorRT's Python bindings are missing: on JetPack, sudo apt install python3-libnvinfer"
        ) from None
    return trt


def check_sidecar(engine: Path, trt_version: str, gpu: tuple[str, str]) -> dict | None:
    """The sidecar detprune writes beside an engine, checked against this TensorRT and GPU."""
    sidecar = engine.with_name(engine.name + ".json")
    if not sidecar.is_file():
        print(f"note: {sidecar} not found; cannot check which TensorRT and GPU built this engine", file=sys.stderr)
        return None
    info = json.loads(sidecar.read_text())
    if info.get("tensorrt_version") != trt_version:
        raise BenchError(f"{engine} was built with TensorRT {info.get('tensorrt_version')}, this is {trt_version}: "
                         "rebuild it here")
    if info.get("compute_capability") != gpu[1] or info.get("gpu_name") != gpu[0]:
        raise BenchError(f"{engine} was built for {info.get('gpu_name')}, this is {gpu[0]}: rebuild it here")
    return info


def _parse(trt, builder, logger, onnx: Path, strongly: bool):
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network((1 << int(flag)) if strongly and flag is not None else 0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx)):
        reason = parser.get_error(0) if parser.num_errors else "unknown error"
        raise BenchError(f"{onnx}: TensorRT cannot parse it: {reason}")
    return network, parser


def graph_precision(trt, network) -> str:
    """``int8`` for a graph with Q/DQ layers, ``fp16`` for one computing in half, else ``fp32``."""
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    if any(layer.type == trt.LayerType.QUANTIZE for layer in layers):
        return "int8"
    if any(layer.num_outputs and layer.get_output(0).dtype == trt.DataType.HALF for layer in layers):
        return "fp16"
    return "fp32"


def build(trt, onnx: Path, engine: Path, precision: str, workspace_gib: float, gpu: tuple[str, str],
          batch: int = 1) -> dict:
    """Build from ONNX here: strongly typed when the graph carries the precision (the only way on
    TensorRT 11), else TensorRT 10's FP16 flag over an FP32 graph. INT8 needs a Q/DQ graph
    ('detprune export --precision int8 --data DIR'), since calibration needs the dataset."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, parser = _parse(trt, builder, logger, onnx, strongly=True)
    graph = graph_precision(trt, network)
    major = int(trt.__version__.split(".")[0])
    if graph != precision and (graph != "fp32" or precision == "int8" or major >= 11):
        raise BenchError(
            f"{onnx} is an {graph} graph and TensorRT {trt.__version__} cannot build it as {precision}: "
            f"export it with 'detprune export --precision {precision}'"
        )
    strongly = graph == precision
    if not strongly:  # TensorRT 10, FP32 graph, FP16 engine: the classic builder flag
        network, parser = _parse(trt, builder, logger, onnx, strongly=False)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if not strongly and precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    inputs = {}
    profile = None
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = list(tensor.shape)
        if dims[0] == -1:  # a dynamic batch axis needs an optimisation profile: 1 to --batch
            profile = profile or builder.create_optimization_profile()
            low, high = [1, *dims[1:]], [batch, *dims[1:]]
            profile.set_shape(tensor.name, low, high, high)
            inputs[tensor.name] = {"min": low, "opt": high, "max": high}
        else:
            inputs[tensor.name] = {"min": dims, "opt": dims, "max": dims}
    if profile is not None:
        config.add_optimization_profile(profile)
    started = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BenchError(f"TensorRT could not build an engine from {onnx}")
    tmp = engine.with_name(f".{engine.name}.tmp")
    tmp.write_bytes(bytes(memoryview(plan)))
    os.replace(tmp, engine)  # never a truncated engine under the real name
    info = {
        "tensorrt_version": trt.__version__, "gpu_name": gpu[0], "compute_capability": gpu[1], "precision": precision,
        "build_mode": "strongly-typed" if strongly else "weakly-typed", "inputs": inputs, "onnx": str(onnx),
        "workspace_bytes": int(workspace_gib * (1 << 30)), "build_seconds": round(time.perf_counter() - started, 2),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "format": 1,
    }
    sidecar = engine.with_name(engine.name + ".json")
    tmp = sidecar.with_name(f".{sidecar.name}.tmp")
    tmp.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, sidecar)
    return info


def time_engine(trt, cuda: Cuda, engine_path: Path, batch: int, warmup: int,
                runs: int) -> tuple[list[float], list[int]]:
    logger = trt.Logger(trt.Logger.WARNING)
    engine = trt.Runtime(logger).deserialize_cuda_engine(engine_path.read_bytes())
    if engine is None:
        raise BenchError(f"{engine_path}: TensorRT cannot deserialize this engine; rebuild it on this device")
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    shape = list(engine.get_tensor_shape(inputs[0]))
    if shape[0] == -1:
        shape[0] = batch
        context.set_input_shape(inputs[0], tuple(shape))
    for name in names:
        dims = tuple(context.get_tensor_shape(name))
        dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
        ptr = cuda.malloc(int(np.prod(dims)) * dtype.itemsize)
        context.set_tensor_address(name, int(ptr))
        if name == inputs[0]:
            cuda.to_device(ptr, np.random.default_rng(0).random(dims).astype(dtype))
    for _ in range(warmup):
        context.execute_async_v3(cuda.handle())
    events = [(cuda.event(), cuda.event()) for _ in range(runs)]
    for start, end in events:
        cuda.record(start)
        context.execute_async_v3(cuda.handle())
        cuda.record(end)
    cuda.synchronize()
    return [cuda.elapsed_ms(s, e) for s, e in events], shape


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", required=True, help="engine to time (written first when --onnx is given)")
    parser.add_argument("--onnx", help="build the engine here from this ONNX file first")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp16")
    parser.add_argument("--workspace", type=float, default=2.0, help="builder workspace in GiB")
    parser.add_argument("--batch", type=int, default=1, help="batch for an engine with a dynamic batch axis")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--json", help="write the measurements here")
    args = parser.parse_args(argv)
    try:
        trt = import_tensorrt()
        cuda = Cuda()
        gpu = cuda.device()
        engine = Path(args.engine)
        if args.onnx:
            if not Path(args.onnx).is_file():
                raise BenchError(f"{args.onnx}: ONNX file not found")
            info = build(trt, Path(args.onnx), engine, args.precision, args.workspace, gpu, args.batch)
        elif not engine.is_file():
            raise BenchError(f"{engine}: engine not found; give --onnx to build it here")
        else:
            info = check_sidecar(engine, trt.__version__, gpu)
        samples, shape = time_engine(trt, cuda, engine, args.batch, args.warmup, args.runs)
        extra = {"tensorrt_version": trt.__version__, "compute_capability": gpu[1], "cuda_api": cuda.kind,
                 "engine": str(engine), "jetson": jetson_environment()}
        record = latency_record(samples, device=f"cuda: {gpu[0]}", input_shape=shape,
                                precision=(info or {}).get("precision", args.precision if args.onnx else "unknown"),
                                warmup=args.warmup, extra=extra)
    except BenchError as err:
        print(f"jetson_bench.py: error: {err}", file=sys.stderr)
        return 2
    print(f"{engine}: median {record['median_ms']:.2f} ms, p90 {record['p90_ms']:.2f} ms, "
          f"p99 {record['p99_ms']:.2f} ms, "
          f"{record['throughput']:.1f} img/s on {gpu[0]}")
    if args.json:
        tmp = Path(args.json).with_name(f".{Path(args.json).name}.tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
