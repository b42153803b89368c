"""Deployment: ONNX export (FP32, mixed FP16, Q/DQ INT8), TensorRT engines, latency.

    export_onnx(module, example_input, "model.onnx")            # FP32, checked against PyTorch
    convert_fp16("model.onnx", "model.fp16.onnx")                # decode tail kept FP32
    quantize_int8("model.onnx", "model.int8.onnx", batches)      # explicit Q/DQ, calibrated
    build_engine("model.fp16.onnx", "model.engine", precision="fp16")
    measure_latency("onnxruntime", "model.onnx", (1, 3, 640, 640))

TensorRT is imported only when an engine is built or loaded.
"""

import sys
import types

from detprune.export.latency import BACKENDS, LatencyStats, measure_latency
from detprune.export.onnx import ExportResult, OnnxModel, Parity, export_onnx, graph_precision, load_onnx
from detprune.export.precision import PrecisionResult, convert_fp16, decode_tail, quantize_int8


def build_engine(*args, **kwargs):
    """See :func:`detprune.export.tensorrt.build_engine`."""
    from detprune.export.tensorrt import build_engine as build

    return build(*args, **kwargs)


class _CallablePackage(types.ModuleType):
    """Importing this package makes it the attribute ``detprune.export``, hiding the API
    function of that name; calling the package therefore is calling that function."""

    def __call__(self, *args, **kwargs):
        from detprune.api import export

        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage

__all__ = [
    "BACKENDS",
    "ExportResult",
    "LatencyStats",
    "OnnxModel",
    "Parity",
    "PrecisionResult",
    "build_engine",
    "convert_fp16",
    "decode_tail",
    "export_onnx",
    "graph_precision",
    "load_onnx",
    "measure_latency",
    "quantize_int8",
]
