"""TensorRT engines: the sidecar and the rules around it run everywhere; building needs TensorRT."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from detprune.errors import BadInputError, UnsupportedError
from detprune.export.tensorrt import (
    EngineInfo,
    Gpu,
    build_mode,
    check_compatible,
    check_gpu_precision,
    default_timing_cache,
    import_tensorrt,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)
from runtime_toys import HAS_TENSORRT

REPO = Path(__file__).resolve().parents[3]
ORIN = Gpu("Orin", "8.7")


def _info(**changes) -> EngineInfo:
    fields = dict(
        tensorrt_version="10.3.0",
        gpu_name="Orin",
        compute_capability="8.7",
        precision="fp16",
        build_mode="strongly-typed",
        inputs={"images": {"min": [1, 3, 640, 640], "opt": [1, 3, 640, 640], "max": [1, 3, 640, 640]}},
        channel_round=8,
    )
    fields.update(changes)
    return EngineInfo(**fields)


def test_sidecar_round_trip_is_atomic_and_complete(tmp_path):
    engine = tmp_path / "model.engine"
    path = write_sidecar(engine, _info())
    assert path == sidecar_path(engine) == tmp_path / "model.engine.json"
    assert [p.name for p in tmp_path.iterdir()] == ["model.engine.json"]  # no temporary left
    data = json.loads(path.read_text())
    assert data["tensorrt_version"] == "10.3.0" and data["compute_capability"] == "8.7" and data["channel_round"] == 8
    assert read_sidecar(engine) == _info()


def test_missing_or_corrupt_sidecar_is_a_one_line_error(tmp_path):
    engine = tmp_path / "model.engine"
    with pytest.raises(BadInputError, match="rebuild"):
        read_sidecar(engine)
    sidecar_path(engine).write_text("{not json")
    with pytest.raises(BadInputError) as err:
        read_sidecar(engine)
    assert "\n" not in str(err.value)


def test_engine_from_another_tensorrt_or_gpu_is_refused():
    check_compatible(_info(), "10.3.0", ORIN)  # same version, same GPU: fine
    with pytest.raises(UnsupportedError) as err:
        check_compatible(_info(), "10.7.0.23", ORIN, "model.engine")
    message = str(err.value)
    assert "10.3.0" in message and "10.7.0.23" in message and "rebuild" in message and "\n" not in message
    with pytest.raises(UnsupportedError, match="NVIDIA H100.*rebuild"):
        check_compatible(_info(), "10.3.0", Gpu("NVIDIA H100 80GB HBM3", "9.0"))
    with pytest.raises(UnsupportedError, match="rebuild"):  # same architecture, another board
        check_compatible(_info(), "10.3.0", Gpu("Jetson AGX Orin", "8.7"))


@pytest.mark.parametrize(
    "precision, graph, version, expected",
    [
        ("fp32", "fp32", "11.4.0", "strongly-typed"),
        ("fp16", "fp16", "11.4.0", "strongly-typed"),
        ("int8", "int8", "10.3.0", "strongly-typed"),
        ("fp16", "fp32", "10.3.0", "weakly-typed"),
        ("int8", "fp32", "10.7.0", "weakly-typed"),
    ],
)
def test_build_mode_follows_the_graph_and_the_version(precision, graph, version, expected):
    assert build_mode(precision, graph, version) == expected


def test_build_modes_that_cannot_work_say_why():
    with pytest.raises(UnsupportedError, match="TensorRT 11.4.0 takes precision from the graph"):
        build_mode("fp16", "fp32", "11.4.0")
    with pytest.raises(UnsupportedError, match="--precision int8 --data"):
        build_mode("int8", "fp32", "11.0.1")
    with pytest.raises(BadInputError, match="already int8"):
        build_mode("fp16", "int8", "10.3.0")
    with pytest.raises(BadInputError, match="unknown precision"):
        build_mode("bf8", "fp32", "10.3.0")


def test_precision_needs_the_right_compute_capability():
    check_gpu_precision("fp16", ORIN)
    check_gpu_precision("int8", Gpu("Tesla T4", "7.5"))
    check_gpu_precision("fp16", Gpu("Jetson Nano", "5.3"))
    with pytest.raises(UnsupportedError, match="no fast FP16"):
        check_gpu_precision("fp16", Gpu("GeForce GTX 1080", "6.1"))
    with pytest.raises(UnsupportedError, match="cannot run INT8"):
        check_gpu_precision("int8", Gpu("Jetson TX2", "6.0"))


def test_timing_cache_is_per_version_and_gpu(tmp_path):
    a = default_timing_cache(tmp_path / "m.engine", "10.3.0", ORIN)
    b = default_timing_cache(tmp_path / "m.engine", "10.3.0", Gpu("NVIDIA H100 80GB HBM3", "9.0"))
    c = default_timing_cache(tmp_path / "other.engine", "10.3.0", ORIN)
    assert a != b and a == c and a.parent == tmp_path and "10.3.0" in a.name


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the message given where TensorRT is not installed")
def test_missing_tensorrt_is_one_line():
    with pytest.raises(UnsupportedError) as err:
        import_tensorrt()
    assert str(err.value).startswith("TensorRT is not installed") and "\n" not in str(err.value)


# --- the self-contained Jetson script -------------------------------------------------------------


@pytest.fixture(scope="module")
def jetson_bench():
    spec = importlib.util.spec_from_file_location("jetson_bench", REPO / "deploy" / "jetson_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_jetson_script_needs_neither_torch_nor_detprune():
    source = (REPO / "deploy" / "jetson_bench.py").read_text()
    imports = [line.split()[1] for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert not any(name.split(".")[0] in ("torch", "detprune", "onnx", "onnxruntime") for name in imports)


def test_jetson_script_writes_the_library_latency_record(jetson_bench):
    from detprune.runtime import LatencyStats

    samples = list(np.random.default_rng(0).gamma(4.0, 2.0, 200))
    ours = jetson_bench.latency_record(
        samples, device="cuda: Orin", input_shape=[2, 3, 640, 640], precision="fp16", warmup=5
    )
    library = LatencyStats.from_samples(samples, backend="tensorrt", device="cuda: Orin", input_shape=[2, 3, 640, 640],
                                        precision="fp16", warmup=5).as_dict()
    assert ours == library


def test_jetson_environment_readers(jetson_bench, tmp_path):
    release = ("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, "
               "DATE: Wed Jan  8 01:49:37 UTC 2025\n")
    assert jetson_bench.parse_tegra_release(release) == "R36.4.3"
    assert jetson_bench.parse_tegra_release("not a release file") is None
    assert jetson_bench.parse_nvpmodel("NV Power Mode: MAXN\n0\n") == {"name": "MAXN", "id": 0}
    assert jetson_bench.parse_nvpmodel("NV Power Mode: 15W\n1\n") == {"name": "15W", "id": 1}
    pinned = ("cpu0: Online=1 Governor=schedutil MinFreq=2201600 MaxFreq=2201600 CurrentFreq=2201600 IdleStates: C1=0\n"
              "GPU MinFreq=1300500000 MaxFreq=1300500000 CurrentFreq=1300500000\n")
    free = pinned.replace("MinFreq=2201600", "MinFreq=729600")
    assert jetson_bench.parse_jetson_clocks(pinned) is True
    assert jetson_bench.parse_jetson_clocks(free) is False
    assert jetson_bench.parse_jetson_clocks("jetson_clocks: must be run as root") is None
    # not a Jetson: every field says so instead of guessing
    assert jetson_bench.jetson_environment(str(tmp_path / "absent")) == {
        "l4t": None, "jetpack": None, "power_mode": None, "jetson_clocks": None}


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the message given where TensorRT is not installed")
def test_jetson_script_without_tensorrt_exits_with_one_line(jetson_bench, tmp_path, capsys):
    assert jetson_bench.main(["--engine", str(tmp_path / "m.engine")]) == 2
    err = capsys.readouterr().err.strip()
    assert "TensorRT" in err and "\n" not in err


# --- with TensorRT and a GPU ----------------------------------------------------------------------------

needs_trt = pytest.mark.skipif(not (HAS_TENSORRT and torch.cuda.is_available()), reason="needs TensorRT and a CUDA GPU")


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory):
    from detprune.export.onnx import export_onnx
    from runtime_toys import small_detector

    path = tmp_path_factory.mktemp("trt") / "net.onnx"
    return export_onnx(small_detector(), torch.rand(1, 3, 64, 64), path, dynamic_batch=True).path


@pytest.mark.gpu
@needs_trt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_builds_runs_and_matches_onnxruntime(small_onnx, tmp_path, precision):
    from detprune.export.onnx import OnnxModel
    from detprune.export.precision import convert_fp16
    from detprune.export.tensorrt import build_engine, load_engine

    source = small_onnx if precision == "fp32" else convert_fp16(small_onnx, tmp_path / "net.fp16.onnx").path
    cache = tmp_path / "timing.cache"
    info = build_engine(source, tmp_path / "net.engine", precision=precision, batch=(1, 2, 4), timing_cache=cache)
    assert cache.stat().st_size > 0 and read_sidecar(tmp_path / "net.engine") == info
    assert info.inputs["images"]["max"] == [4, 3, 64, 64]
    engine = load_engine(tmp_path / "net.engine")
    x = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
    got = engine(x)[0]
    expected = OnnxModel(small_onnx)(x)[0]
    np.testing.assert_allclose(got, expected, atol=2e-2 if precision == "fp16" else 1e-3)
    times = engine.time_runs((1, 3, 64, 64), warmup=3, runs=10)
    assert len(times) == 10 and min(times) > 0


@pytest.mark.gpu
@needs_trt
def test_engine_with_foreign_sidecar_is_refused(small_onnx, tmp_path):
    from detprune.export.tensorrt import build_engine, load_engine

    build_engine(small_onnx, tmp_path / "net.engine", precision="fp32")
    data = json.loads(sidecar_path(tmp_path / "net.engine").read_text())
    data["tensorrt_version"] = "9.9.9"
    sidecar_path(tmp_path / "net.engine").write_text(json.dumps(data))
    with pytest.raises(UnsupportedError, match="rebuild"):
        load_engine(tmp_path / "net.engine")


@pytest.mark.gpu
@needs_trt
def test_corrupt_onnx_leaves_no_engine(tmp_path):
    from detprune.export.tensorrt import build_engine

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(BadInputError):
        build_engine(bad, tmp_path / "net.engine", precision="fp16")
    assert not (tmp_path / "net.engine").exists()
