"""``detprune export | engine | bench`` and tools/build_engine.py: real runs and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from detprune import cli
from detprune.export.onnx import export_onnx, load_onnx
from runtime_toys import HAS_TENSORRT

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def deploy_commands(monkeypatch):
    """The CLI with the deploy commands only, so these tests do not depend on the others."""
    monkeypatch.setattr(cli, "COMMANDS", ("export", "engine", "bench"))


@pytest.fixture(scope="module")
def yolo_adapter():
    try:
        from detprune.adapters import adapter_class

        adapter_class("yolo")
    except ImportError as err:
        pytest.skip(f"the YOLO adapter is not importable: {err}")


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory):
    from runtime_toys import small_detector

    return export_onnx(small_detector(), torch.rand(1, 3, 64, 64), tmp_path_factory.mktemp("cli") / "net.onnx").path


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("detprune: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_export_fp16_prints_both_parities(yolo_adapter, tmp_path, capsys):
    out = tmp_path / "model.fp16.onnx"
    assert (
        cli.main(["export", "--model", "yolov8n.yaml", "--precision", "fp16", "--imgsz", "64", "--out", str(out)]) == 0
    )
    printed = capsys.readouterr().out
    assert "fp32 vs PyTorch: max abs error" in printed and "fp16 vs fp32: max abs error" in printed
    model = load_onnx(out)
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 64, 64]


def test_export_int8_without_data_is_refused(tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert cli.main(["export", "--model", "yolov8n.yaml", "--precision", "int8", "--out", str(out)]) == 2
    assert "--data" in _one_line_error(capsys)
    assert not out.exists()


def test_export_with_missing_calibration_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "model.onnx"
    code = cli.main(
        [
            "export",
            "--model",
            "yolov8n.yaml",
            "--precision",
            "int8",
            "--data",
            str(tmp_path / "nowhere"),
            "--out",
            str(out),
        ]
    )
    assert code == 2
    assert "calibration folder not found" in _one_line_error(capsys)
    assert not out.exists()


def test_engine_from_corrupt_onnx_is_refused_before_anything_else(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 10)
    out = tmp_path / "model.engine"
    assert cli.main(["engine", "--onnx", str(bad), "--out", str(out)]) == 2
    assert str(bad) in _one_line_error(capsys)
    assert not out.exists() and not Path(f"{out}.json").exists()


def test_engine_int8_from_fp32_needs_calibration_data(small_onnx, tmp_path, capsys):
    out = tmp_path / "model.engine"
    assert cli.main(["engine", "--onnx", str(small_onnx), "--precision", "int8", "--out", str(out)]) == 2
    assert "--data" in _one_line_error(capsys)
    assert not out.exists()


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the message given where TensorRT is not installed")
def test_engine_without_tensorrt_says_what_is_needed(small_onnx, tmp_path, capsys):
    out = tmp_path / "model.engine"
    assert cli.main(["engine", "--onnx", str(small_onnx), "--precision", "fp16", "--out", str(out), "--bench"]) == 2
    assert "TensorRT is not installed" in _one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the message given where TensorRT is not installed")
def test_build_engine_script_without_tensorrt_exits_non_zero(small_onnx, tmp_path):
    out = tmp_path / "model.engine"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "build_engine.py"), "--onnx", str(small_onnx), "--precision", "fp16",
         "--out", str(out), "--bench"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("build_engine.py: error: TensorRT is not installed")
    assert not out.exists()


def _slim_yaml(folder: Path) -> Path:
    """YOLOv8n at half its width: a stand-in for a model pruned to about a quarter of the FLOPs."""
    import yaml
    from ultralytics.nn.tasks import yaml_model_load

    cfg = yaml_model_load("yolov8n.yaml")
    cfg["scales"] = {"n": [0.33, 0.125, 1024]}
    cfg.pop("yaml_file", None)
    path = folder / "yolov8n-slim.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_bench_times_original_and_pruned_side_by_side(yolo_adapter, tmp_path, capsys):
    report = tmp_path / "bench.json"
    code = cli.main(["bench", "--model", "yolov8n.yaml", "--pruned", str(_slim_yaml(tmp_path)), "--imgsz", "64",
                     "--warmup", "1", "--runs", "5", "--threads", "1", "--json", str(report)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "FLOPs x" in printed and "latency x" in printed and "1 thread(s)" in printed
    rows = json.loads(report.read_text())["models"]
    assert [r["name"] for r in rows] == ["original", "pruned"]
    original, pruned = rows
    assert original["flops_ratio"] == 1.0 and original["latency_ratio"] == 1.0
    assert 0.15 < pruned["flops_ratio"] < 0.5  # half the width: roughly a quarter of the FLOPs
    assert pruned["latency_ratio"] == pytest.approx(pruned["latency"]["median_ms"] / original["latency"]["median_ms"])
    assert pruned["latency"]["threads"] == 1 and pruned["params"] < original["params"]
