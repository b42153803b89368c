"""The latency runtime: one artifact builder per backend, the registry, the availability checks."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

from detprune import runtime
from detprune.errors import BadInputError, DetpruneError, UnsupportedError


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()


def test_the_builtin_backends_are_registered_in_order():
    assert runtime.names()[:3] == ("onnxruntime", "torch-cuda", "tensorrt")


def test_unknown_backends_are_refused_where_they_are_asked_for():
    with pytest.raises(BadInputError, match="unknown backend 'openvino'"):
        runtime.get_backend("openvino")
    with pytest.raises(DetpruneError, match="unknown latency backend 'openvino'; choose one of onnxruntime"):
        runtime.check_backend("openvino")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("backend", ["torch-cuda", "tensorrt"])
def test_gpu_backends_refuse_a_machine_without_cuda(backend):
    with pytest.raises(UnsupportedError, match=f"the {backend} backend needs a CUDA GPU"):
        runtime.check_backend(backend)


def test_onnxruntime_prepares_the_exporters_graph_and_times_it(tmp_path):
    example = torch.rand(1, 3, 16, 16)
    path = runtime.prepare("onnxruntime", _net(), example, tmp_path, "net")
    assert path == tmp_path / "net.onnx" and path.is_file()
    other = runtime.prepare("onnxruntime", _net(), example, tmp_path, path=tmp_path / "given.onnx")
    assert other == tmp_path / "given.onnx" and other.is_file()
    stats = runtime.time_side_by_side("onnxruntime", {"a": path, "b": other}, example.shape, warmup=0, runs=2,
                                      threads=1)
    assert set(stats) == {"a", "b"} and stats["a"].extra == {"interleaved_with": ["a", "b"]}


def test_torch_cuda_times_the_module_itself(tmp_path):
    module = _net()
    assert runtime.prepare("torch-cuda", module, torch.rand(1, 3, 8, 8), tmp_path) is module


@pytest.mark.parametrize("major, graphs", [("10.9.0", ["net.onnx"]), ("11.0.0", ["net.onnx", "net.fp16.onnx"])])
def test_tensorrt_builds_an_engine_from_the_exporters_graph(tmp_path, monkeypatch, major, graphs):
    """TensorRT 11 is strongly typed: the graph is converted to FP16 before the engine is built."""
    from detprune.export import precision, tensorrt

    built, converted = [], []
    monkeypatch.setattr(tensorrt, "import_tensorrt", lambda: types.SimpleNamespace(__version__=major))

    def fake_build(onnx_path, engine_path, *, precision, timing_cache=None, **kw):
        built.append((onnx_path.name, engine_path.name, precision, timing_cache.name))

    def fake_fp16(src, dst, **kw):
        converted.append(dst.name)
        dst.write_bytes(src.read_bytes())
        return types.SimpleNamespace(path=dst)

    monkeypatch.setattr(tensorrt, "build_engine", fake_build)
    monkeypatch.setattr(precision, "convert_fp16", fake_fp16)
    engine = runtime.prepare("tensorrt", _net(), torch.rand(1, 3, 16, 16), tmp_path, "net")
    assert engine == tmp_path / "net.engine"
    assert converted == graphs[1:]
    assert built == [(graphs[-1], "net.engine", "fp16", "timing.cache")]
