"""Reduced-precision ONNX graphs: mixed FP16, and INT8 with explicit Q/DQ quantization.

TensorRT 11 takes precision from the graph alone (strongly typed networks), so the precision
of an engine is decided here, in the ONNX file. Both conversions keep the *decode tail* in
FP32: every node after the last feature layer (for YOLO: DFL softmax and its expectation
conv, anchor/stride arithmetic, the class sigmoid, the concatenations), because box
coordinates in input pixels run to hundreds and FP16 keeps only ~3 significant digits there,
and because the scores are what thresholds and NMS cut on.

FP16 uses this module's own cast pass (see docs/deploy.md for why not onnxconverter-common or
ModelOpt AutoCast): activations that flow from the image through convertible nodes become
FP16, weights that only such nodes read are stored as FP16, and a Cast is inserted exactly
where an FP16 tensor meets an FP32 consumer. Shape arithmetic (which does not flow from the
image as floats), ``Cast`` nodes and nodes with subgraphs stay as they are. Graph inputs and
outputs stay FP32.

INT8 uses ONNX Runtime's static quantizer in QDQ form, following TensorRT's rules for
explicit quantization: signed INT8, symmetric (zero point 0) activations per tensor and
weights per output channel, Q/DQ on the inputs of the weighted layers only (outputs are left
to fuse with the next layer's quantize), biases left in float.
"""

from __future__ import annotations

import itertools
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from detprune.errors import BadInputError
from detprune.export.onnx import ExportError, OnnxModel, Parity, compare_outputs, graph_precision, load_onnx
from detprune.utils.atomic import atomic_path

# FP16 vs FP32 graph on ONNX Runtime: the largest error relative to each output's range.
# FP16 has a unit roundoff of 4.9e-4; a few dozen layers of it stay well inside 1e-2.
FP16_TOLERANCE = 1e-2
# INT8 parity is reported, not enforced (accuracy is judged by mAP); an error of half the
# output range or a non-finite value means the graph is broken, not merely coarse.
INT8_ABSURD = 0.5
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")

_FEATURE_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
_SHAPE_OPS = {"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity"}
_STAY_AS_IS = {"Cast", "CastLike", "Range", "ConstantOfShape", "NonMaxSuppression", "RoiAlign", "TopK"}
_TYPE_AGNOSTIC = {"Shape", "Size"}
_FLOAT, _FLOAT16 = 1, 10


@dataclass
class PrecisionResult:
    """A converted graph, how many nodes stayed FP32, and its parity against the FP32 graph."""

    path: Path
    precision: str
    kept_fp32: int
    parity: Parity
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"{self.path}: {self.precision} ONNX, {self.kept_fp32} decode node(s) kept FP32; {self.parity.describe()}"
        )


# --- the decode tail ---------------------------------------------------------------------------


def decode_tail(model) -> list[str]:
    """Names of the nodes after the last feature layer: what stays FP32 in every precision.

    A node is in the tail when no feature layer (Conv, ConvTranspose, Gemm, MatMul) can be
    reached from its outputs. A conv fed by a Softmax through reshapes only is an expectation
    over a distribution (YOLO's DFL), part of the decode, not a feature layer.
    """
    graph = model.graph
    _name_nodes(graph)
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def reads_softmax(node) -> bool:
        tensor = node.input[0]
        while tensor in producer:
            prev = producer[tensor]
            if prev.op_type == "Softmax":
                return True
            if prev.op_type not in _SHAPE_OPS:
                return False
            tensor = prev.input[0]
        return False

    features = {n.name for n in graph.node if n.op_type in _FEATURE_OPS and not reads_softmax(n)}
    reaches: dict[str, bool] = {}
    for node in reversed(_topological(graph)):
        reaches[node.name] = any(
            c.name in features or reaches.get(c.name, False) for out in node.output for c in consumers.get(out, [])
        )
    return [n.name for n in graph.node if n.name not in features and not reaches[n.name]]


# --- FP16 --------------------------------------------------------------------------------------


def convert_fp16(
    src: str | Path,
    dst: str | Path,
    *,
    keep_fp32: Iterable[str] = (),
    check_input: np.ndarray | None = None,
    tolerance: float = FP16_TOLERANCE,
) -> PrecisionResult:
    """Write a mixed FP16 copy of the FP32 graph ``src`` to ``dst``, checked on ONNX Runtime.

    The decode tail (:func:`decode_tail`) and the nodes named in ``keep_fp32`` stay FP32;
    inputs and outputs stay FP32 (float32 at the graph boundary). The FP16 graph is run
    against ``src`` on ``check_input`` (a random image-like tensor if None): the largest
    error relative to each output's range must stay under ``tolerance`` (1e-2), else
    nothing is written.
    """
    model = _load_fp32(src)
    keep = set(decode_tail(model)) | set(keep_fp32)
    converted = to_fp16(model, keep)
    with atomic_path(dst, suffix=".onnx") as tmp:
        _save_checked(converted, tmp)
        parity = _parity(src, tmp, check_input, "fp32 onnx")
        if not parity.max_rel <= tolerance:
            raise ExportError(f"{dst}: the FP16 graph drifts from FP32 ({parity.describe()}, tolerance {tolerance:g})")
    return PrecisionResult(Path(dst), "fp16", len(keep), parity)


def to_fp16(model, keep_fp32: set[str]):
    """The cast pass: a new ModelProto with the convertible activation path in FP16."""
    import onnx
    from onnx import helper, numpy_helper, shape_inference

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    _name_nodes(graph)
    _fold_weight_identities(graph)
    inferred = shape_inference.infer_shapes(out, strict_mode=False)
    types = {
        vi.name: vi.type.tensor_type.elem_type
        for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
    }
    inits = {init.name: init for init in graph.initializer}
    types.update({name: init.data_type for name, init in inits.items()})
    opset = next((o.version for o in out.opset_import if o.domain in ("", "ai.onnx")), 17)

    # which float tensors carry the image forward (shape arithmetic does not)
    activation = {i.name for i in graph.input if types.get(i.name) == _FLOAT}
    low: dict[str, tuple[set[int], set[int]]] = {}  # node -> (inputs, outputs) that become FP16
    for node in _topological(graph):
        act_inputs = [i for i, name in enumerate(node.input) if name in activation]
        if act_inputs and node.op_type not in _TYPE_AGNOSTIC:
            activation.update(o for o in node.output if types.get(o) == _FLOAT)
        plan = _fp16_plan(node, act_inputs, types, opset) if node.name not in keep_fp32 else None
        if plan is not None:
            low[node.name] = plan

    # the type each consumer needs for each of its inputs
    needs: dict[str, set[int]] = {}
    for node in graph.node:
        ins = low.get(node.name, (set(), set()))[0]
        for i, name in enumerate(node.input):
            if name and types.get(name) == _FLOAT:
                needs.setdefault(name, set()).add(_FLOAT16 if i in ins else _FLOAT)
    # weights read only by FP16 nodes are stored as FP16; shared ones stay FP32 and get a Cast
    current = dict(types)
    for name, init in inits.items():
        if init.data_type == _FLOAT and needs.get(name) == {_FLOAT16}:
            init.CopyFrom(numpy_helper.from_array(_to_half(numpy_helper.to_array(init)), name))
            current[name] = _FLOAT16
    for node in graph.node:
        for j, name in enumerate(node.output):
            if j in low.get(node.name, (set(), set()))[1]:
                current[name] = _FLOAT16

    # graph outputs stay FP32: an FP16 producer writes to a renamed tensor and a Cast follows
    final_casts = []
    for output in graph.output:
        if current.get(output.name) == _FLOAT16:
            renamed = f"{output.name}_fp16"
            for node in graph.node:
                node.output[:] = [renamed if o == output.name else o for o in node.output]
                node.input[:] = [renamed if i == output.name else i for i in node.input]
            current[renamed] = _FLOAT16
            final_casts.append(
                helper.make_node("Cast", [renamed], [output.name], name=f"{output.name}_to_fp32", to=_FLOAT)
            )

    nodes, casts = [], {}
    for node in _topological(graph):
        ins = low.get(node.name, (set(), set()))[0]
        for i, name in enumerate(node.input):
            if not name or current.get(name) not in (_FLOAT, _FLOAT16):
                continue
            if node.op_type in _TYPE_AGNOSTIC:
                continue
            want = _FLOAT16 if i in ins else _FLOAT
            if current[name] == want:
                continue
            key = (name, want)
            if key not in casts:
                cast_out = f"{name}_as_{'fp16' if want == _FLOAT16 else 'fp32'}"
                nodes.append(helper.make_node("Cast", [name], [cast_out], name=f"{cast_out}_cast", to=want))
                casts[key] = cast_out
            node.input[i] = casts[key]
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes + final_casts)
    del graph.value_info[:]  # stale FP32 types; the checker re-infers them
    return out


def _fp16_plan(node, act_inputs: list[int], types: dict, opset: int) -> tuple[set[int], set[int]] | None:
    """Which inputs and outputs of ``node`` turn FP16, or None if the node stays FP32.

    Decided from the operator schema: only the inputs and outputs typed by the same type
    variable as an activation input convert (Resize's ``scales`` is a fixed float tensor and
    stays, its ``roi`` has its own variable and stays), and only if that variable admits FP16.
    """
    import onnx

    if not act_inputs or node.op_type in _STAY_AS_IS or node.op_type in _TYPE_AGNOSTIC:
        return None
    if node.domain not in ("", "ai.onnx") or any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute
    ):
        return None
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
    except Exception:
        return None
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}

    def var(params, index):
        if not params:
            return None
        return params[min(index, len(params) - 1)].type_str

    act_vars = {var(schema.inputs, i) for i in act_inputs if types.get(node.input[i]) == _FLOAT}
    act_vars.discard(None)
    if not act_vars or any("tensor(float16)" not in allowed.get(v, ()) for v in act_vars):
        return None
    ins = {
        i
        for i, name in enumerate(node.input)
        if name and types.get(name) == _FLOAT and var(schema.inputs, i) in act_vars
    }
    outs = {j for j, name in enumerate(node.output) if types.get(name) == _FLOAT and var(schema.outputs, j) in act_vars}
    return ins, outs


def _fold_weight_identities(graph) -> None:
    """Read shared weights directly: the TorchScript exporter passes equal initializers on
    through ``Identity`` nodes, which would otherwise each need a Cast of their own."""
    inits = {i.name for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    alias = {
        n.output[0]: n.input[0]
        for n in graph.node
        if n.op_type == "Identity" and n.input[0] in inits and n.output[0] not in outputs
    }
    if not alias:
        return
    kept = [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    for node in kept:
        node.input[:] = [alias.get(name, name) for name in node.input]
    del graph.node[:]
    graph.node.extend(kept)


def _to_half(values: np.ndarray) -> np.ndarray:
    limit = np.finfo(np.float16).max  # clip instead of overflowing to inf
    return np.clip(values, -limit, limit).astype(np.float16)


# --- INT8 --------------------------------------------------------------------------------------


def quantize_int8(
    src: str | Path,
    dst: str | Path,
    calibration: Iterable[np.ndarray],
    *,
    method: str = "minmax",
    check_input: np.ndarray | None = None,
    keep_fp32: Iterable[str] = (),
    op_types: Sequence[str] = ("Conv", "ConvTranspose", "Gemm", "MatMul"),
    progress: Callable[[Iterable], Iterable] | None = None,
) -> PrecisionResult:
    """Write an explicitly quantized (QDQ) INT8 copy of the FP32 graph ``src`` to ``dst``.

    ``calibration`` yields input batches (float32, as the model sees them). ``method`` picks
    the activation ranges: ``minmax`` (fast; what TensorRT's MinMax calibrator does),
    ``entropy`` (TensorRT's default, KL divergence) or ``percentile`` (99.999th). The decode
    tail and ``keep_fp32`` stay unquantized. Parity against FP32 on ``check_input`` (ideally a
    held-out image) is reported; only an absurd error (> 0.5 of the output range, or
    non-finite) fails.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in CALIBRATION_METHODS:
        raise BadInputError(f"unknown calibration method {method!r}; choose one of {', '.join(CALIBRATION_METHODS)}")
    _load_fp32(src)
    batches = iter(calibration)
    first = next(batches, None)
    if first is None:
        raise BadInputError("no calibration batch was produced; give more calibration images than the batch size")
    with tempfile.TemporaryDirectory(prefix="detprune-int8-") as work:
        prepared = _preprocess(Path(src), Path(work) / "prepared.onnx")
        model = load_onnx(prepared, full_check=False)
        keep = set(decode_tail(model)) | set(keep_fp32)
        input_name = model.graph.input[0].name
        reader = _Reader(input_name, itertools.chain([first], batches), progress)
        with atomic_path(dst, suffix=".onnx") as tmp:
            quantize_static(
                str(prepared),
                str(tmp),
                reader,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(op_types),
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=sorted(keep),
                calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                                  "percentile": CalibrationMethod.Percentile}[method],
                extra_options={
                    "ActivationSymmetric": True,  # TensorRT: zero point 0
                    "WeightSymmetric": True,
                    "QuantizeBias": False,  # TensorRT quantizes no bias; it folds it in float
                    "OpTypesToExcludeOutputQuantization": list(op_types),  # Q/DQ on inputs only
                },
            )
            load_onnx(tmp)
            if graph_precision(load_onnx(tmp, full_check=False)) != "int8":
                raise ExportError(
                    f"{dst}: the quantizer inserted no Q/DQ node; the graph has no {'/'.join(op_types)} to quantize"
                )
            parity = _parity(src, tmp, check_input, "fp32 onnx")
            if not parity.max_rel <= INT8_ABSURD:
                raise ExportError(
                    f"{dst}: the INT8 graph is unusable ({parity.describe()}); check the calibration images"
                )
    return PrecisionResult(
        Path(dst), "int8", len(keep), parity, {"calibration_batches": reader.count, "method": method}
    )


def _preprocess(src: Path, dst: Path) -> Path:
    """ONNX Runtime's recommended pre-quantization pass (shape inference, constant folding).

    Folding matters: the TorchScript exporter shares equal constants through ``Identity``
    nodes, which the quantizer cannot see through to find a conv's weights.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
    except Exception:  # symbolic shape inference fails on some dynamic graphs; try without it
        try:
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
        except Exception:
            return src
    return dst


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over an iterable of input batches."""

    def __init__(self, input_name: str, batches: Iterable[np.ndarray], progress):
        self.input_name = input_name
        self._batches: Iterator[np.ndarray] = iter(progress(batches) if progress else batches)
        self.count = 0

    def get_next(self) -> dict | None:
        batch = next(self._batches, None)
        if batch is None:
            return None
        self.count += 1
        return {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}

    def __iter__(self):
        return self

    def __next__(self):
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item


# --- helpers -----------------------------------------------------------------------------------


def _load_fp32(src: str | Path):
    model = load_onnx(src)
    precision = graph_precision(model)
    if precision != "fp32":
        raise BadInputError(f"{src}: already an {precision} graph; convert the FP32 export instead")
    return model


def _save_checked(model, path: Path) -> None:
    import onnx

    onnx.save(model, str(path))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as err:
        first = str(err).strip().splitlines()[0]
        raise ExportError(f"the converted graph is invalid: {first}") from None


def _parity(reference_path, candidate_path, check_input: np.ndarray | None, name: str) -> Parity:
    reference = OnnxModel(reference_path)
    if check_input is None:
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in reference.input_shape]
        check_input = np.random.default_rng(0).random(shape, dtype=np.float32)
    expected = reference(check_input)
    return compare_outputs(expected, OnnxModel(candidate_path)(check_input), name)


def _name_nodes(graph) -> None:
    """Give unnamed nodes a unique name: block lists and reports refer to nodes by name."""
    seen = {n.name for n in graph.node if n.name}
    for index, node in enumerate(graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in seen:
                name += "_"
            node.name = name
            seen.add(name)


def _topological(graph) -> list:
    """The graph's nodes in an order where every producer precedes its consumers."""
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in known for i in n.input)]
        if not ready:  # inputs from outer scopes or a cycle: keep the file order for the rest
            ordered.extend(pending)
            break
        ready_ids = {id(n) for n in ready}
        for node in ready:
            ordered.append(node)
            known.update(node.output)
        pending = [n for n in pending if id(n) not in ready_ids]
    return ordered
