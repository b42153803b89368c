"""Deployment artifacts: ONNX export (FP32, mixed FP16, Q/DQ INT8) and TensorRT engines.

    export_onnx(module, example_input, "model.onnx")            # FP32, checked against PyTorch
    convert_fp16("model.onnx", "model.fp16.onnx")                # decode tail kept FP32
    quantize_int8("model.onnx", "model.int8.onnx", batches)      # explicit Q/DQ, calibrated
    build_engine("model.fp16.onnx", "model.engine", precision="fp16")

A format layer: it knows no detector family and no pruning. Timing these artifacts is
:mod:`detprune.runtime`'s (``measure_latency``). TensorRT is imported only when an engine is
built or loaded.
"""

from detprune.export.onnx import ExportResult, OnnxModel, Parity, export_onnx, graph_precision, load_onnx
from detprune.export.precision import PrecisionResult, convert_fp16, decode_tail, quantize_int8


def build_engine(*args, **kwargs):
    """See :func:`detprune.export.tensorrt.build_engine`."""
    from detprune.export.tensorrt import build_engine as build

    return build(*args, **kwargs)


__all__ = [
    "ExportResult",
    "OnnxModel",
    "Parity",
    "PrecisionResult",
    "build_engine",
    "convert_fp16",
    "decode_tail",
    "export_onnx",
    "graph_precision",
    "load_onnx",
    "quantize_int8",
]
