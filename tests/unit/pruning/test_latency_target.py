"""Pruning to a measured latency ratio (``--target-latency``) on ONNX Runtime, YOLOv5n at 96 px.

Timings on a shared CPU are noisy: the tests check that the search measures, records and
prunes, and that it refuses what it cannot reach, never a precise ratio.
"""

from __future__ import annotations

import json

import pytest
import torch

from detprune.cli import main
from detprune.errors import DetpruneError
from detprune.pruning.latency_target import prune_to_latency
from pruning_toys import one_thread  # noqa: F401

BASE = ["prune", "--model", "yolov5n.yaml", "--random-init", "--imgsz", "96", "--criterion", "l1"]


@pytest.fixture(scope="module")
def yolov5n():
    from detprune.adapters import get_adapter
    from detprune.criteria import get_criterion

    adapter = get_adapter("yolov5n.yaml")
    model = adapter.prepare_for_pruning(adapter.load("yolov5n.yaml"))
    return adapter, model, get_criterion("l1").score(adapter, model)


def test_prune_command_meets_a_latency_target_and_records_it(tmp_path, capsys):
    out = tmp_path / "run"
    # a wide tolerance: the test is about the search and its record, not this machine's speed
    code = main(BASE + ["--target-latency", "0.6", "--backend", "onnxruntime", "--latency-search", "flops",
                        "--latency-tolerance", "0.5", "--search-runs", "5", "--round-to", "8", "--out", str(out)])
    assert code == 0
    report = json.loads((out / "prune.json").read_text())
    search = report["latency_target"]
    assert search["backend"] == "onnxruntime" and search["target"] == 0.6 and search["round_to"] == 8
    assert search["method"] == "flops" and search["predicted_ratio"] is None
    chosen = search["candidates"][search["chosen"]]
    assert (
        search["measured_ratio"]
        == chosen["latency_ratio"]
        == pytest.approx(chosen["pruned_ms"] / chosen["original_ms"])
    )
    assert abs(search["measured_ratio"] - 0.6) <= 0.5 * 0.6
    assert report["after"]["flops"] < report["before"]["flops"]
    assert report["achieved"]["flops"] == pytest.approx(chosen["flops_kept"])
    assert "latency: x" in capsys.readouterr().out


def test_unreachable_latency_names_the_closest_measured_ratio(yolov5n):
    adapter, model, scores = yolov5n
    widths = [p.shape for p in model.parameters()]
    # 3% of the original latency: the fixed cost of a graph run alone is more than that
    with pytest.raises(DetpruneError, match=r"closest measured latency ratio was \d\.\d{3}") as caught:
        prune_to_latency(adapter, model, scores, target=0.03, imgsz=96, max_steps=2, warmup=1, runs=3)
    assert "\n" not in str(caught.value)
    assert [p.shape for p in model.parameters()] == widths  # candidates are pruned on copies


@pytest.mark.parametrize("backend", ["torch-cuda", "tensorrt"])
def test_an_absent_backend_is_one_line(backend, tmp_path, capsys):
    if torch.cuda.is_available() and backend == "torch-cuda":
        pytest.skip("a CUDA GPU is present: the torch-cuda backend is available here")
    code = main(BASE + ["--target-latency", "0.6", "--backend", backend, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and ("CUDA GPU" in err or "TensorRT" in err)
    assert not (tmp_path / "run").exists()


def test_latency_is_one_target_among_the_others(tmp_path, capsys):
    code = main(
        BASE + ["--target-latency", "0.6", "--backend", "onnxruntime", "--ratio", "0.3", "--out", str(tmp_path / "run")]
    )
    err = capsys.readouterr().err
    assert code == 2 and "--target-latency" in err and "--ratio" in err
    assert main(BASE + ["--target-latency", "1.5", "--backend", "onnxruntime", "--out", str(tmp_path / "run")]) == 2
    assert "--target-latency must lie in (0, 1)" in capsys.readouterr().err
