"""Latency backends: ONNX Runtime on the CPU everywhere, PyTorch FP16 with CUDA graphs on a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from detprune.errors import BadInputError, UnsupportedError
from detprune.runtime import LatencyStats, measure_latency
from detprune.runtime.torch_cuda import capture_cuda_graph
from detprune.runtime.ort import onnxruntime_side_by_side
from detprune.export.onnx import export_onnx
from runtime_toys import HAS_TENSORRT, small_detector

HAS_CUDA = torch.cuda.is_available()


def test_stats_follow_the_samples():
    samples = list(np.linspace(1.0, 10.0, 100))
    stats = LatencyStats.from_samples(samples, backend="onnxruntime", device="cpu: test", input_shape=[4, 3, 64, 64],
                                      precision="fp32", warmup=2, threads=2)
    assert stats.runs == 100 and stats.warmup == 2 and stats.threads == 2
    assert stats.median_ms == pytest.approx(5.5)
    assert stats.p90_ms == pytest.approx(np.percentile(samples, 90))
    assert stats.p99_ms == pytest.approx(np.percentile(samples, 99))
    assert stats.min_ms == 1.0 and stats.max_ms == 10.0
    assert stats.throughput == pytest.approx(4 * 1000 / 5.5)  # images, not batches, per second
    with pytest.raises(BadInputError):
        LatencyStats.from_samples([], backend="x", device="y", input_shape=[1], precision="fp32", warmup=0)
    with pytest.raises(BadInputError):
        LatencyStats.from_samples(
            [1.0, float("nan")], backend="x", device="y", input_shape=[1], precision="fp32", warmup=0
        )


def test_onnxruntime_backend_times_a_graph(tmp_path):
    path = export_onnx(small_detector(), torch.rand(1, 3, 64, 64), tmp_path / "net.onnx").path
    stats = measure_latency("onnxruntime", path, (1, 3, 64, 64), warmup=2, runs=15, threads=1)
    assert stats.backend == "onnxruntime" and stats.device.startswith("cpu") and stats.precision == "fp32"
    assert stats.threads == 1 and stats.runs == 15 and stats.input_shape == [1, 3, 64, 64]
    assert 0 < stats.min_ms <= stats.median_ms <= stats.p90_ms <= stats.p99_ms <= stats.max_ms
    assert stats.median_ms < 5000  # a 64 px conv net runs in milliseconds, not seconds
    assert stats.throughput == pytest.approx(1000 / stats.median_ms)
    with pytest.raises(BadInputError, match="fixed batch of 1"):
        measure_latency("onnxruntime", path, (2, 3, 64, 64), warmup=0, runs=1)


def test_onnxruntime_side_by_side_times_every_graph_in_each_round(tmp_path):
    big = export_onnx(small_detector(), torch.rand(1, 3, 64, 64), tmp_path / "big.onnx").path
    tiny = export_onnx(nn.Sequential(nn.Conv2d(3, 8, 3)).eval(), torch.rand(1, 3, 64, 64), tmp_path / "tiny.onnx").path
    stats = onnxruntime_side_by_side({"big": big, "tiny": tiny}, (1, 3, 64, 64), warmup=2, runs=10, threads=1)
    assert set(stats) == {"big", "tiny"}
    assert all(
        s.runs == 10 and s.threads == 1 and s.extra["interleaved_with"] == ["big", "tiny"] for s in stats.values()
    )
    assert stats["tiny"].median_ms < stats["big"].median_ms  # one small conv against a small network


def test_timed_sessions_do_not_spin_and_rounds_rotate(tmp_path, monkeypatch):
    """Every session detprune times (whole graphs, the latency table's layers) has ONNX Runtime's
    thread spinning off, whose idle threads would take the cores of the session timed next; and
    each round of a side-by-side timing starts one graph further on."""
    from detprune.export import onnx as onnx_module
    from detprune.pruning.latency_measure import _ort_session

    path = export_onnx(small_detector(), torch.rand(1, 3, 64, 64), tmp_path / "net.onnx").path
    for session in (onnx_module.OnnxModel(path, threads=2).session, _ort_session(str(path), 2)):
        options = session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1

    paths = {
        name: export_onnx(small_detector(), torch.rand(1, 3, 64, 64), tmp_path / f"{name}.onnx").path for name in "abc"
    }
    order: list[str] = []
    real_call = onnx_module.OnnxModel.__call__
    monkeypatch.setattr(
        onnx_module.OnnxModel, "__call__", lambda self, array: (order.append(self.path.stem), real_call(self, array))[1]
    )
    onnxruntime_side_by_side(paths, (1, 3, 64, 64), warmup=0, runs=3, threads=1)
    assert order == list("abc" "bca" "cab")


def test_onnxruntime_backend_exports_a_module_itself():
    stats = measure_latency("onnxruntime", small_detector(), (2, 3, 32, 32), warmup=1, runs=3)
    assert stats.runs == 3 and stats.input_shape == [2, 3, 32, 32] and stats.threads >= 1


def test_bad_backend_and_counts_are_refused():
    with pytest.raises(BadInputError, match="unknown backend"):
        measure_latency("openvino", small_detector(), (1, 3, 32, 32))
    with pytest.raises(BadInputError):
        measure_latency("onnxruntime", small_detector(), (1, 3, 32, 32), warmup=0, runs=0)


@pytest.mark.skipif(HAS_CUDA, reason="checks the message given where no CUDA GPU is visible")
def test_torch_cuda_without_gpu_says_what_is_needed():
    with pytest.raises(UnsupportedError) as err:
        measure_latency("torch-cuda", small_detector(), (1, 3, 32, 32), warmup=1, runs=2)
    assert "CUDA GPU" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU: torch.cuda.is_available() is False")
def test_torch_cuda_captures_a_cuda_graph_in_fp16():
    model = small_detector().cuda().half()
    static = torch.rand(2, 3, 64, 64, device="cuda", dtype=torch.float16)
    replay, output, captured, failure = capture_cuda_graph(model, static)
    assert captured and failure is None and output.dtype == torch.float16
    fresh = torch.rand_like(static)
    static.copy_(fresh)  # a replay reads whatever the captured input buffer holds now
    replay()
    torch.cuda.synchronize()
    with torch.no_grad():
        expected = model(fresh)
    torch.testing.assert_close(output, expected, rtol=1e-2, atol=1e-2)

    stats = measure_latency("torch-cuda", small_detector(), (2, 3, 64, 64), warmup=5, runs=30)
    assert stats.extra["cuda_graph"] is True and stats.precision == "fp16"
    assert stats.device.startswith("cuda: ") and stats.runs == 30
    assert 0 < stats.min_ms <= stats.median_ms <= stats.p99_ms <= stats.max_ms


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the message given where TensorRT is not installed")
def test_tensorrt_backend_without_tensorrt_says_what_is_needed(tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"engine")
    with pytest.raises(UnsupportedError) as err:
        measure_latency("tensorrt", engine, (1, 3, 64, 64), warmup=1, runs=2)
    assert "TensorRT is not installed" in str(err.value) and "\n" not in str(err.value)
