"""ONNX export of a (pruned) detector, checked against PyTorch on ONNX Runtime.

The exporter is PyTorch's TorchScript-based one (``dynamo=False``). The dynamo exporter was
tried on YOLOv8n with torch 2.14: it needs ``onnxscript`` (not a dependency here), took about
16x longer (9.7 s against 0.6 s at 128 px on 2 cores), forces opset 18 and converts down, and
drops the module scopes from node names (``/model.22/dfl/Softmax`` becomes ``node_softmax``).
Those scoped names are what lets :mod:`detprune.export.precision` and a user point at the
head's decode nodes, so the TorchScript exporter stays until the dynamo one keeps them.

Every file is written through :func:`detprune.utils.atomic.atomic_path`: the graph is
exported, checked and compared in a temporary sibling that is renamed onto the target only
when every check passed, so a failed export leaves no file behind.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from detprune.errors import BadInputError, DetpruneError, UnsupportedError
from detprune.utils.atomic import atomic_path

MIN_OPSET = 17  # LayerNormalization and the Q/DQ per-channel rules TensorRT 10/11 read
FP32_TOLERANCE = 1e-3  # max relative error of the FP32 graph against PyTorch (see Parity)

# ONNX tensor element types that hold learned values (FLOAT, UINT8, INT8, FLOAT16, BFLOAT16)
_WEIGHT_TYPES = {1, 2, 3, 10, 16}
_QDQ = {"QuantizeLinear", "DequantizeLinear"}


class ExportError(DetpruneError):
    """The graph could not be written, or it does not compute what the model computes."""


@dataclass(frozen=True)
class Parity:
    """How far a graph's outputs are from a reference on the same input.

    ``max_rel`` is the largest absolute error divided by the largest absolute reference value
    of the same output (then the worst over outputs): an error relative to the output's range,
    which stays meaningful where a pointwise relative error divides by values near zero.
    """

    max_abs: float
    mean_abs: float
    max_rel: float
    reference: str

    def describe(self) -> str:
        return (
            f"max abs error {self.max_abs:.3g}, mean abs error {self.mean_abs:.3g}, "
            f"max relative error {self.max_rel:.3g} (vs {self.reference})"
        )

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote and what it checked."""

    path: Path
    precision: str
    opset: int
    input_names: list[str]
    output_names: list[str]
    input_shape: list[int | str]
    dynamic_batch: bool
    num_parameters: int
    parity: Parity | None
    simplified: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["path"] = str(self.path)
        out["parity"] = self.parity.as_dict() if self.parity else None
        return out

    def summary(self) -> str:
        shape = "x".join(str(d) for d in self.input_shape)
        line = (
            f"{self.path}: {self.precision} ONNX opset {self.opset}, input {shape}, {self.num_parameters:,} parameters"
        )
        return line + (f"; {self.parity.describe()}" if self.parity else "")


# --- export ------------------------------------------------------------------------------------


def export_onnx(
    module: nn.Module,
    example_input: torch.Tensor | Sequence[torch.Tensor],
    path: str | Path,
    *,
    opset: int = MIN_OPSET,
    dynamic_batch: bool = False,
    simplify: bool = False,
    check: bool = True,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    tolerance: float = FP32_TOLERANCE,
) -> ExportResult:
    """Export ``module`` to ONNX at ``path``; check the graph and its outputs.

    ``module`` takes the tensor(s) of ``example_input`` and returns tensors (nested tuples,
    lists or dicts of them are flattened in order). With ``check``, ``onnx.checker`` validates
    the graph and ONNX Runtime runs it on ``example_input``: the largest relative error against
    PyTorch must stay under ``tolerance`` (1e-3 by default; see :class:`Parity`), or the export
    fails and nothing is written. ``simplify`` runs onnxslim (constant folding, dead nodes).
    """
    if opset < MIN_OPSET:
        raise UnsupportedError(f"opset {opset} is too old: detprune exports opset {MIN_OPSET} or newer")
    inputs = _as_tuple(example_input)
    was_training = module.training
    module.eval()
    try:
        return _export_checked(module, inputs, Path(path), opset, dynamic_batch, simplify, check,
                               input_names, output_names, tolerance)
    finally:
        module.train(was_training)  # the caller's module is left as it was given


def _export_checked(module, inputs, target, opset, dynamic_batch, simplify, check, input_names, output_names,
                    tolerance) -> ExportResult:
    with torch.no_grad():
        reference = flatten_outputs(module(*inputs))
    if not reference:
        raise ExportError("the model returned no tensors; export the adapter's export_module(model)")
    in_names = list(input_names or (["images"] if len(inputs) == 1 else [f"input{i}" for i in range(len(inputs))]))
    out_names = list(output_names or [f"output{i}" for i in range(len(reference))])
    if len(in_names) != len(inputs) or len(out_names) != len(reference):
        raise ExportError(
            f"{len(in_names)} input / {len(out_names)} output names given for a model with "
            f"{len(inputs)} input(s) and {len(reference)} output(s)"
        )
    dynamic_axes = {name: {0: "batch"} for name in in_names + out_names} if dynamic_batch else None

    with atomic_path(target, suffix=".onnx") as tmp:
        _torch_export(module, inputs, tmp, opset, in_names, out_names, dynamic_axes)
        if simplify:
            _simplify(tmp)
        model = load_onnx(tmp, full_check=check)
        parity = None
        if check:
            runner = OnnxModel(tmp)
            parity = compare_outputs(
                [t.numpy() for t in reference], runner(*[t.detach().cpu().numpy() for t in inputs]), "pytorch"
            )
            if not parity.max_rel <= tolerance:  # also catches NaN
                raise ExportError(
                    f"{target}: the ONNX graph does not match PyTorch ({parity.describe()}, "
                    f"tolerance {tolerance:g}); nothing was written"
                )
        shape: list[int | str] = list(inputs[0].shape)
        if dynamic_batch:
            shape[0] = "batch"
        result = ExportResult(
            path=target,
            precision="fp32",
            opset=opset,
            input_names=in_names,
            output_names=out_names,
            input_shape=shape,
            dynamic_batch=dynamic_batch,
            num_parameters=count_parameters(model),
            parity=parity,
            simplified=simplify,
        )
    return result


def _torch_export(module, inputs, path, opset, in_names, out_names, dynamic_axes) -> None:
    with warnings.catch_warnings():
        # tracer warnings about Python control flow on shapes are expected for detection heads
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module,
                inputs,
                str(path),
                opset_version=opset,
                input_names=in_names,
                output_names=out_names,
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
                dynamo=False,
            )
        except Exception as err:  # the exporter raises many types; the CLI needs one line
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ExportError(f"torch.onnx.export failed: {first}") from err


def _simplify(path: Path) -> None:
    try:
        import onnxslim
    except ImportError:
        raise UnsupportedError("--simplify needs onnxslim: pip install 'detprune[deploy]'") from None
    import onnx

    slim = onnxslim.slim(onnx.load(str(path)))
    onnx.save(slim, str(path))


# --- reading and checking ----------------------------------------------------------------------


def load_onnx(path: str | Path, *, full_check: bool = True):
    """Read and validate an ONNX file; a missing, truncated or corrupt file is a one-line error."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: ONNX file not found")
    if path.stat().st_size == 0:
        raise BadInputError(f"{path}: empty file, not an ONNX model; export it again")
    try:
        model = onnx.load(str(path))
    except Exception as err:
        raise BadInputError(
            f"{path}: not a readable ONNX model ({type(err).__name__}); the file is truncated or corrupt, export it "
            f"again"
        ) from None
    if not model.graph.node:
        raise BadInputError(
            f"{path}: the ONNX model has no graph nodes; the file is truncated or corrupt, export it again"
        )
    try:
        onnx.checker.check_model(str(path), full_check=full_check)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BadInputError(f"{path}: invalid ONNX graph: {first}") from None
    return model


def count_parameters(model) -> int:
    """Learned values stored in the graph: weight initializers, not Q/DQ scales or shape constants.

    The exporter stores bit-identical tensors once (e.g. the all-zero biases of an untrained
    model's folded BatchNorms), so an untrained graph can count fewer than its module.
    """
    qdq_params = {
        name for node in model.graph.node if node.op_type in _QDQ for name in list(node.input)[1:]
    }
    total = 0
    for init in model.graph.initializer:
        if init.data_type in _WEIGHT_TYPES and init.name not in qdq_params:
            total += int(np.prod(init.dims)) if len(init.dims) else 1
    return total


def graph_precision(model) -> str:
    """``int8`` for a graph with Q/DQ nodes, ``fp16`` for one with FP16 weights, else ``fp32``."""
    if any(node.op_type in _QDQ for node in model.graph.node):
        return "int8"
    if any(init.data_type == 10 for init in model.graph.initializer):
        return "fp16"
    return "fp32"


# --- running -----------------------------------------------------------------------------------


def session_options(threads: int | None):
    """ONNX Runtime session options for detprune's sessions, which are often timed side by side.

    Intra-op threads split one node's work; inter-op stays 1 so runs are sequential. Spinning is
    off: by default a session's idle threads spin for a while after each run, and with several
    sessions alive (interleaved timing) they take the cores the running one needs. Measured on 2
    cores, YOLOv8n at 320, 3 sessions with 2 threads timed in turn: 33-43 ms with spinning, three
    copies of one graph up to 25% apart; 16.3 ms without, the copies within 0.1 ms.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # warnings about unused initializers are noise here
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    return options


class OnnxModel:
    """An ONNX graph on ONNX Runtime, returning its raw outputs as numpy arrays.

    The raw outputs are what an adapter post-processes (decoding, NMS), so a quantized or FP16
    graph can be scored with the same code as the PyTorch model.
    """

    def __init__(
        self, path: str | Path, *, threads: int | None = None, providers: Sequence[str] = ("CPUExecutionProvider",)
    ):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise BadInputError(f"{self.path}: ONNX file not found")
        options = session_options(threads)
        self.threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=list(providers))
        except Exception as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise BadInputError(f"{self.path}: ONNX Runtime cannot load this graph: {first}") from None
        self.inputs = self.session.get_inputs()
        self.outputs = self.session.get_outputs()

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]

    @property
    def input_shape(self) -> list[int | str]:
        return list(self.inputs[0].shape)

    def __call__(self, *arrays: np.ndarray | torch.Tensor) -> list[np.ndarray]:
        if len(arrays) != len(self.inputs):
            raise BadInputError(f"{self.path}: the graph takes {len(self.inputs)} input(s), got {len(arrays)}")
        feed = {}
        for meta, array in zip(self.inputs, arrays):
            if isinstance(array, torch.Tensor):
                array = array.detach().cpu().numpy()
            dtype = np.float16 if meta.type == "tensor(float16)" else np.float32
            feed[meta.name] = np.ascontiguousarray(array, dtype=dtype)
        return self.session.run(None, feed)


# --- helpers -----------------------------------------------------------------------------------


def compare_outputs(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray], reference_name: str) -> Parity:
    """The worst error of ``candidate`` against ``reference``, output by output (see :class:`Parity`)."""
    if len(reference) != len(candidate):
        raise ExportError(f"the graph returns {len(candidate)} outputs, {reference_name} returns {len(reference)}")
    max_abs = mean_abs = max_rel = 0.0
    for ref, got in zip(reference, candidate):
        ref = np.asarray(ref, dtype=np.float64)
        got = np.asarray(got, dtype=np.float64)
        if ref.shape != got.shape:
            raise ExportError(f"output shape {got.shape} differs from {reference_name}'s {ref.shape}")
        if ref.size == 0:
            continue
        err = np.abs(ref - got)
        if not np.all(np.isfinite(got)):
            return Parity(float("inf"), float("inf"), float("inf"), reference_name)
        scale = max(float(np.abs(ref).max()), 1e-12)
        max_abs = max(max_abs, float(err.max()))
        mean_abs = max(mean_abs, float(err.mean()))
        max_rel = max(max_rel, float(err.max()) / scale)
    return Parity(max_abs, mean_abs, max_rel, reference_name)


def flatten_outputs(outputs: Any) -> list[torch.Tensor]:
    """Tensors of a model's output in the order the ONNX exporter lists them."""
    if isinstance(outputs, torch.Tensor):
        return [outputs.detach().float().cpu() if outputs.is_floating_point() else outputs.detach().cpu()]
    if isinstance(outputs, dict):
        outputs = list(outputs.values())
    if isinstance(outputs, (list, tuple)):
        return [t for item in outputs for t in flatten_outputs(item)]
    return []


def _as_tuple(example_input: torch.Tensor | Iterable[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    if isinstance(example_input, torch.Tensor):
        return (example_input,)
    inputs = tuple(example_input)
    if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
        raise ExportError("example_input must be a tensor or a sequence of tensors")
    return inputs
