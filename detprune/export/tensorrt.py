"""TensorRT engines: one builder for TensorRT 10.x (JetPack, desktop) and 11.x (desktop pip).

TensorRT 11 builds strongly typed networks only: the precision comes from the ONNX graph (FP32,
mixed FP16 from :func:`detprune.export.precision.convert_fp16`, Q/DQ INT8 from
:func:`~detprune.export.precision.quantize_int8`) and there are no FP16/INT8 builder flags or
INT8 calibrators. TensorRT 10 builds the same strongly typed network whenever the graph
carries its precision; given an FP32 graph and a lower precision it falls back to the classic
("weakly typed") build: the FP16 flag, or the INT8 flag with an entropy calibrator over
dataset images and a calibration cache.

An engine is bound to the TensorRT version (major, minor, patch and build must match) and to
the GPU it was built on. Every engine is written with a JSON sidecar (``<engine>.json``) that
records both; :func:`load_engine` refuses an engine whose sidecar names another version or GPU
with a one-line message to rebuild it, instead of failing deep inside deserialization.

TensorRT is imported at run time; where it (or a CUDA GPU) is missing, one line says what is
needed. Buffers and streams are PyTorch's (torch.cuda), present wherever detprune is.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from detprune.errors import BadInputError, DetpruneError, UnsupportedError
from detprune.utils.atomic import write_bytes, write_text

PRECISIONS = ("fp32", "fp16", "int8")
SUPPORTED_MAJORS = (10, 11)
SIDECAR_FORMAT = 1
INSTALL_HINT = (
    "install TensorRT 10.x or 11.x for this GPU's CUDA (desktop: pip install tensorrt; "
    "Jetson: the python3-libnvinfer package of JetPack)"
)


class EngineBuildError(DetpruneError):
    """TensorRT could not parse the graph or build an engine from it."""


# --- what is installed -------------------------------------------------------------------------


def import_tensorrt():
    """The ``tensorrt`` module, or a one-line UnsupportedError naming what to install."""
    try:
        import tensorrt as trt
    except ImportError:
        raise UnsupportedError(f"TensorRT is not installed: {INSTALL_HINT}") from None
    except OSError as err:  # the bindings import but libnvinfer.so does not load
        raise UnsupportedError(f"TensorRT is installed but its libraries do not load ({err}); {INSTALL_HINT}") from None
    major = version_major(trt.__version__)
    if major not in SUPPORTED_MAJORS:
        raise UnsupportedError(
            f"TensorRT {trt.__version__} is not supported; detprune builds with TensorRT 10.x or 11.x"
        )
    return trt


def version_major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        raise BadInputError(f"cannot read a TensorRT version from {version!r}") from None


@dataclass(frozen=True)
class Gpu:
    name: str
    compute_capability: str  # "8.7"

    @property
    def cc(self) -> tuple[int, int]:
        major, minor = self.compute_capability.split(".")
        return int(major), int(minor)


def current_gpu() -> Gpu:
    """The CUDA device PyTorch sees, or a one-line UnsupportedError."""
    import torch

    if not torch.cuda.is_available():
        raise UnsupportedError(
            "TensorRT needs an NVIDIA GPU with CUDA; PyTorch sees none (torch.cuda.is_available() is False)"
        )
    major, minor = torch.cuda.get_device_capability()
    return Gpu(torch.cuda.get_device_name(), f"{major}.{minor}")


# --- what can be built -------------------------------------------------------------------------


def check_gpu_precision(precision: str, gpu: Gpu) -> None:
    """FP16 needs fast FP16 arithmetic (compute capability 5.3, 6.0, 6.2 or 7.0+; not the 6.1 of
    Pascal GeForce cards, which run FP16 at 1/64 rate); INT8 needs the DP4A instruction (6.1+)."""
    cc = gpu.cc
    if precision == "fp16" and (cc < (5, 3) or cc == (6, 1)):
        raise UnsupportedError(f"{gpu.name} (compute capability {gpu.compute_capability}) has no fast FP16; build fp32")
    if precision == "int8" and cc < (6, 1):
        raise UnsupportedError(
            f"{gpu.name} (compute capability {gpu.compute_capability}) cannot run INT8; build fp16 or fp32"
        )


def build_mode(precision: str, graph_precision: str, trt_version: str) -> str:
    """``strongly-typed`` when the graph carries ``precision``; ``weakly-typed`` (builder flags,
    TensorRT 10 only) for an FP32 graph built in FP16 or INT8. Raises when neither can work."""
    if precision not in PRECISIONS:
        raise BadInputError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if graph_precision == precision:
        return "strongly-typed"
    if graph_precision != "fp32":
        raise BadInputError(
            f"the ONNX graph is already {graph_precision}; build it as --precision {graph_precision} or start from "
            f"the FP32 export"
        )
    if version_major(trt_version) >= 11:
        how = (
            "detprune export --precision fp16" if precision == "fp16" else "detprune export --precision int8 --data DIR"
        )
        raise UnsupportedError(
            f"TensorRT {trt_version} takes precision from the graph only (strongly typed); "
            f"give it a {precision} graph ({how}), or let 'detprune engine' convert it"
        )
    return "weakly-typed"


# --- sidecar -----------------------------------------------------------------------------------


@dataclass
class EngineInfo:
    """The JSON sidecar of an engine: what it was built from, by what, for which GPU."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    build_mode: str
    inputs: dict[str, dict[str, list[int]]]  # name -> {"min", "opt", "max"} shapes
    outputs: dict[str, str] = field(default_factory=dict)  # name -> dtype
    onnx: str = ""
    onnx_sha256: str = ""
    workspace_bytes: int = 0
    channel_round: int | None = None
    built_at: str = ""
    build_seconds: float = 0.0
    format: int = SIDECAR_FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def sidecar_path(engine_path: str | Path) -> Path:
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def write_sidecar(engine_path: str | Path, info: EngineInfo) -> Path:
    return write_text(sidecar_path(engine_path), json.dumps(info.as_dict(), indent=2, sort_keys=True) + "\n")


def read_sidecar(engine_path: str | Path) -> EngineInfo:
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise BadInputError(
            f"{path}: no sidecar beside the engine, so its TensorRT version and GPU are unknown; rebuild it with "
            f"'detprune engine'"
        )
    try:
        data = json.loads(path.read_text())
        known = {f for f in EngineInfo.__dataclass_fields__}
        return EngineInfo(**{k: v for k, v in data.items() if k in known})
    except (ValueError, TypeError) as err:
        raise BadInputError(f"{path}: unreadable engine sidecar ({err}); rebuild the engine") from None


def check_compatible(info: EngineInfo, trt_version: str, gpu: Gpu, engine_path: str | Path = "engine") -> None:
    """An engine runs only under the exact TensorRT version and on the GPU model it was built for."""
    if info.tensorrt_version != trt_version:
        raise UnsupportedError(
            f"{engine_path} was built with TensorRT {info.tensorrt_version}, this is TensorRT {trt_version}: "
            "rebuild the engine here from its ONNX (engines do not move across TensorRT versions)"
        )
    if info.compute_capability != gpu.compute_capability or info.gpu_name != gpu.name:
        raise UnsupportedError(
            f"{engine_path} was built for {info.gpu_name} (sm {info.compute_capability}), this is {gpu.name} "
            f"(sm {gpu.compute_capability}): rebuild the engine on this GPU from its ONNX"
        )


def default_timing_cache(engine_path: Path, trt_version: str, gpu: Gpu) -> Path:
    """One timing cache per TensorRT version and GPU, shared by the engines of a folder."""
    slug = "".join(c if c.isalnum() else "-" for c in gpu.name).strip("-").lower()
    return engine_path.parent / f"timing-trt{trt_version}-{slug}.cache"


# --- building ----------------------------------------------------------------------------------


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    *,
    precision: str = "fp16",
    workspace_gib: float = 4.0,
    batch: tuple[int, int, int] | None = None,
    timing_cache: str | Path | None = None,
    calibration: Iterable[np.ndarray] | None = None,
    calibration_cache: str | Path | None = None,
    channel_round: int | None = None,
    extra: dict | None = None,
) -> EngineInfo:
    """Build a serialized engine from ``onnx_path`` and write it with its sidecar, atomically.

    ``batch`` is (min, opt, max) for a graph with a dynamic batch axis (default (1, 1, 1)).
    ``calibration`` yields float32 input batches and is used only by the TensorRT 10 INT8
    build from an FP32 graph. On any failure no engine (and no sidecar) is left behind.
    """
    from detprune.export.onnx import graph_precision, load_onnx

    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    graph = load_onnx(onnx_path)  # a bad file is the user's to fix, whatever is installed
    trt = import_tensorrt()
    gpu = current_gpu()
    mode = build_mode(precision, graph_precision(graph), trt.__version__)
    check_gpu_precision(precision, gpu)
    if (
        mode == "weakly-typed"
        and precision == "int8"
        and calibration is None
        and not (calibration_cache and Path(calibration_cache).is_file())
    ):
        raise BadInputError(
            "an INT8 build from an FP32 graph needs calibration images (--data DIR) or a calibration cache"
        )

    logger = _Logger(trt)
    builder = trt.Builder(logger)
    flags = 0
    if mode == "strongly-typed":
        flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        if flag is not None:  # accepted (and implied) by TensorRT 11, required by 10
            flags |= 1 << int(flag)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or logger.last_error()
        raise EngineBuildError(f"{onnx_path}: TensorRT cannot parse the graph: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    shapes, profile = _add_profile(trt, builder, network, config, batch)
    if mode == "weakly-typed":
        config.set_flag(trt.BuilderFlag.FP16)  # INT8 builds let unquantizable layers run FP16
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            input_shape = shapes[network.get_input(0).name]["opt"]
            config.int8_calibrator = _calibrator(trt, calibration or (), input_shape, calibration_cache)
            if profile is not None:
                config.set_calibration_profile(profile)

    cache_path = Path(timing_cache) if timing_cache else default_timing_cache(engine_path, trt.__version__, gpu)
    cache = _load_timing_cache(config, cache_path)
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - started
    if serialized is None:
        raise EngineBuildError(
            f"TensorRT could not build an engine from {onnx_path}: {logger.last_error() or 'see the log above'}"
        )
    write_bytes(cache_path, bytes(memoryview(cache.serialize())))

    info = EngineInfo(
        tensorrt_version=trt.__version__,
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        precision=precision,
        build_mode=mode,
        inputs=shapes,
        outputs={network.get_output(i).name: str(network.get_output(i).dtype) for i in range(network.num_outputs)},
        onnx=str(onnx_path),
        onnx_sha256=_sha256(onnx_path),
        workspace_bytes=int(workspace_gib * (1 << 30)),
        channel_round=channel_round,
        built_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        build_seconds=round(seconds, 2),
        extra=dict(extra or {}, timing_cache=str(cache_path)),
    )
    write_bytes(engine_path, bytes(memoryview(serialized)))
    try:
        write_sidecar(engine_path, info)
    except BaseException:
        engine_path.unlink(missing_ok=True)  # an engine without its sidecar cannot be checked
        raise
    return info


def _add_profile(trt, builder, network, config, batch):
    """An optimisation profile when an input has a dynamic batch axis (else None), and the
    input shapes for the sidecar."""
    shapes: dict[str, dict[str, list[int]]] = {}
    profile = None
    lo, opt, hi = batch or (1, 1, 1)
    if not 1 <= lo <= opt <= hi:
        raise BadInputError(f"batch range must satisfy 1 <= min <= opt <= max, got {lo}, {opt}, {hi}")
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = list(tensor.shape)
        if any(d == -1 for d in dims[1:]):
            raise BadInputError(
                f"input {tensor.name} has dynamic dimensions besides the batch {dims}; export with a fixed --imgsz"
            )
        if dims[0] == -1:
            profile = profile or builder.create_optimization_profile()
            mins, opts, maxs = ([b, *dims[1:]] for b in (lo, opt, hi))
            profile.set_shape(tensor.name, mins, opts, maxs)
            shapes[tensor.name] = {"min": mins, "opt": opts, "max": maxs}
        else:
            if batch is not None and (lo, opt, hi) != (dims[0],) * 3:
                raise BadInputError(
                    f"input {tensor.name} has a fixed batch of {dims[0]}; export with --dynamic-batch to build a "
                    f"batch range"
                )
            shapes[tensor.name] = {"min": dims, "opt": dims, "max": dims}
    if profile is not None:
        config.add_optimization_profile(profile)
    return shapes, profile


def _load_timing_cache(config, path: Path):
    """Start from the saved timing cache where there is one, so rebuilds skip known tactics."""
    data = path.read_bytes() if path.is_file() else b""
    try:
        cache = config.create_timing_cache(data)
    except Exception:  # written by another TensorRT build: start afresh, it is overwritten after
        cache = config.create_timing_cache(b"")
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def _calibrator(trt, batches: Iterable[np.ndarray], input_shape: Sequence[int], cache_path):
    """TensorRT 10's INT8 entropy calibrator over dataset images, with a calibration cache."""
    import torch

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            super().__init__()
            self._batches = iter(batches)
            self._device = torch.empty(tuple(input_shape), dtype=torch.float32, device="cuda")

        def get_batch_size(self) -> int:
            return int(input_shape[0])

        def get_batch(self, names):
            batch = next(self._batches, None)
            if batch is None:
                return None
            self._device.copy_(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
            torch.cuda.synchronize()  # TensorRT reads the buffer on its own stream
            return [int(self._device.data_ptr())]

        def read_calibration_cache(self):
            if cache_path and Path(cache_path).is_file():
                return Path(cache_path).read_bytes()
            return None

        def write_calibration_cache(self, cache) -> None:
            if cache_path:
                write_bytes(cache_path, bytes(memoryview(cache)))

    return EntropyCalibrator()


class _Logger:
    """A TensorRT logger that keeps the last error so a failed build can say why in one line."""

    def __new__(cls, trt):
        class Logger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.errors: list[str] = []

            def log(self, severity, msg):
                if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                    self.errors.append(str(msg).strip().splitlines()[0])
                if severity in (
                    trt.ILogger.Severity.ERROR,
                    trt.ILogger.Severity.INTERNAL_ERROR,
                    trt.ILogger.Severity.WARNING,
                ):
                    print(f"[TensorRT] {msg}", file=sys.stderr)

            def last_error(self) -> str:
                return self.errors[-1] if self.errors else ""

        return Logger()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- loading and running -----------------------------------------------------------------------


class TrtEngine:
    """A deserialized engine with its I/O buffers on the GPU and its own CUDA stream."""

    def __init__(self, path: str | Path, *, check: bool = True):
        import torch

        trt = import_tensorrt()
        gpu = current_gpu()
        self.path = Path(path)
        if not self.path.is_file():
            raise BadInputError(f"{self.path}: engine file not found")
        self.info = read_sidecar(self.path) if check or sidecar_path(self.path).is_file() else None
        if check and self.info is not None:
            check_compatible(self.info, trt.__version__, gpu, self.path)
        self.gpu = gpu
        self._trt = trt
        self._logger = _Logger(trt)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise BadInputError(
                f"{self.path}: TensorRT cannot deserialize this engine ({self._logger.last_error()}); rebuild it"
            )
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if n not in self.input_names]
        self.buffers: dict[str, Any] = {}

    def allocate(self, input_shape: Sequence[int]) -> None:
        """Set the input shape and bind device buffers for every I/O tensor."""
        import torch

        name = self.input_names[0]
        if -1 in tuple(self.engine.get_tensor_shape(name)):
            if not self.context.set_input_shape(name, tuple(int(d) for d in input_shape)):
                raise BadInputError(f"{self.path}: input shape {tuple(input_shape)} is outside the engine's profile")
        for tensor in self.input_names + self.output_names:
            shape = tuple(self.context.get_tensor_shape(tensor))
            dtype = torch.from_numpy(np.empty(0, dtype=self._trt.nptype(self.engine.get_tensor_dtype(tensor)))).dtype
            self.buffers[tensor] = torch.empty(shape, dtype=dtype, device="cuda")
            self.context.set_tensor_address(tensor, self.buffers[tensor].data_ptr())

    def __call__(self, array: np.ndarray) -> list[np.ndarray]:
        import torch

        self.allocate(array.shape)
        with torch.cuda.stream(self.stream):
            self.buffers[self.input_names[0]].copy_(torch.from_numpy(np.ascontiguousarray(array)))
            self.execute()
        self.stream.synchronize()
        return [self.buffers[n].cpu().numpy() for n in self.output_names]

    def execute(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise DetpruneError(f"{self.path}: TensorRT execution failed: {self._logger.last_error()}")

    def time_runs(self, input_shape: Sequence[int], warmup: int, runs: int) -> list[float]:
        """Milliseconds of ``runs`` executions after ``warmup``, timed with CUDA events on the engine's stream."""
        import torch

        self.allocate(input_shape)
        self.buffers[self.input_names[0]].uniform_()
        with torch.cuda.stream(self.stream):
            for _ in range(warmup):
                self.execute()
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(runs)]
            for start, end in events:
                start.record(self.stream)
                self.execute()
                end.record(self.stream)
        self.stream.synchronize()
        return [start.elapsed_time(end) for start, end in events]


def load_engine(path: str | Path, *, check: bool = True) -> TrtEngine:
    """Deserialize an engine after checking its sidecar against this TensorRT and GPU."""
    return TrtEngine(path, check=check)
