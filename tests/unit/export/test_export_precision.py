"""Mixed FP16 and Q/DQ INT8 graphs of a YOLO model: structure, boundary types, parity with FP32."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from detprune.errors import BadInputError
from detprune.export.onnx import OnnxModel, export_onnx, graph_precision, load_onnx
from detprune.export.precision import FP16_TOLERANCE, INT8_ABSURD, convert_fp16, decode_tail, quantize_int8
from export_toys import IMGSZ, yolo_for_export


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    path = tmp_path_factory.mktemp("precision") / "yolo.onnx"
    return export_onnx(yolo_for_export(), torch.rand(1, 3, IMGSZ, IMGSZ), path).path


@pytest.fixture(scope="module")
def images():
    """Image-like batches: smooth gradients plus noise, each one different."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, IMGSZ, dtype=np.float32)
    return [
        np.clip(
            ramp[None, None, :, None] * rng.random((1, 3, 1, 1)) + 0.2 * rng.random((1, 3, IMGSZ, IMGSZ)), 0, 1
        ).astype(np.float32)
        for _ in range(5)
    ]


def test_decode_tail_is_the_yolo_head_after_its_last_convs(fp32):
    tail = set(decode_tail(load_onnx(fp32)))
    assert {"/model.22/dfl/Softmax", "/model.22/dfl/conv/Conv", "/model.22/Sigmoid"} <= tail
    model = load_onnx(fp32)
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    assert [c for c in convs if c in tail] == ["/model.22/dfl/conv/Conv"]  # the feature convs stay out
    assert not any(name.startswith("/model.2/") for name in tail)  # nothing from the backbone


def test_fp16_graph_keeps_fp32_boundaries_and_decode(fp32, tmp_path, images):
    result = convert_fp16(fp32, tmp_path / "yolo.fp16.onnx", check_input=images[0])
    model = load_onnx(result.path)
    assert graph_precision(model) == "fp16"
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [onnx.TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [onnx.TensorProto.FLOAT]
    weights = {i.name: i.data_type for i in model.graph.initializer}
    assert weights["model.22.dfl.conv.weight"] == onnx.TensorProto.FLOAT  # decode stays FP32
    assert weights["model.22.cv3.0.2.weight"] == onnx.TensorProto.FLOAT16  # features go FP16
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    sigmoid = next(n for n in model.graph.node if n.name == "/model.22/Sigmoid")
    assert types[sigmoid.input[0]] == onnx.TensorProto.FLOAT
    backbone_act = next(n for n in model.graph.node if n.name == "/model.2/cv2/act/Mul")
    assert types[backbone_act.output[0]] == onnx.TensorProto.FLOAT16

    out = OnnxModel(result.path)(images[1])[0]
    assert out.dtype == np.float32
    reference = OnnxModel(fp32)(images[1])[0]
    assert np.abs(out - reference).max() / np.abs(reference).max() < FP16_TOLERANCE
    assert result.parity.max_rel < FP16_TOLERANCE and result.parity.reference == "fp32 onnx"


def test_int8_graph_is_explicitly_quantized_for_tensorrt(fp32, tmp_path, images):
    result = quantize_int8(fp32, tmp_path / "yolo.int8.onnx", images[:4], check_input=images[4])
    assert result.extra["calibration_batches"] == 4
    model = load_onnx(result.path)
    inits = {i.name: i for i in model.graph.initializer}
    nodes = model.graph.node
    ops = {n.op_type for n in nodes}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # weights: INT8 initializers behind a per-output-channel DequantizeLinear
    weight_dqs = [n for n in nodes if n.op_type == "DequantizeLinear" and n.input[0] in inits
                  and inits[n.input[0]].data_type == onnx.TensorProto.INT8 and len(inits[n.input[0]].dims) == 4]
    assert weight_dqs
    for dq in weight_dqs:
        scale = numpy_helper.to_array(inits[dq.input[1]])
        assert scale.ndim == 1 and scale.shape[0] == inits[dq.input[0]].dims[0]
        assert next(a.i for a in dq.attribute if a.name == "axis") == 0
    # activations: one scale per tensor, symmetric (zero point 0), signed INT8
    for q in (n for n in nodes if n.op_type == "QuantizeLinear"):
        assert numpy_helper.to_array(inits[q.input[1]]).ndim == 0
        zero = numpy_helper.to_array(inits[q.input[2]])
        assert zero.dtype == np.int8 and not zero.any()
    # the decode tail reads no quantized tensor
    producers = {o: n for n in nodes for o in n.output}
    dfl = next(n for n in nodes if n.name.endswith("/dfl/conv/Conv"))
    assert producers[dfl.input[0]].op_type == "Softmax"
    assert all(producers[i].op_type != "DequantizeLinear" for i in dfl.input if i in producers)

    out = OnnxModel(result.path)(images[4])[0]
    assert out.dtype == np.float32
    assert np.isfinite(result.parity.max_rel) and result.parity.max_rel < INT8_ABSURD


def test_precision_conversions_refuse_bad_sources(fp32, tmp_path, images):
    fp16 = convert_fp16(fp32, tmp_path / "a.fp16.onnx").path
    with pytest.raises(BadInputError, match="already an fp16 graph"):
        quantize_int8(fp16, tmp_path / "b.onnx", images)
    with pytest.raises(BadInputError, match="no calibration batch"):
        quantize_int8(fp32, tmp_path / "c.onnx", [])
    with pytest.raises(BadInputError, match="calibration method"):
        quantize_int8(fp32, tmp_path / "d.onnx", images, method="mse")
    assert not (tmp_path / "b.onnx").exists() and not (tmp_path / "c.onnx").exists()
