"""No input is ever overwritten, two runs never both claim one output, killed runs leave nothing
that stays, and KITTI result files keep every score distinct (issue #25).

Every test records the sha256 of each input before the command and checks it after.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from detprune import cli
from detprune.data.kitti import read_kitti_results
from detprune.data.loader import load_dataset
from detprune.data.types import Detections
from detprune.evaluation.kitti_results import write_kitti_results
from detprune.utils.atomic import ConcurrentWriteError, atomic_dir, atomic_path

REPO = Path(__file__).resolve().parents[2]


def _hashes(*roots: Path) -> dict[str, str]:
    """sha256 of every file under ``roots`` (a file counts as itself)."""
    files = [p for r in roots for p in ([r] if r.is_file() else sorted(r.rglob("*"))) if p.is_file()]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _error(capsys, argv) -> str:
    capsys.readouterr()
    assert cli.main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("detprune: error: ") and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A yolov8n checkpoint for KITTI's three classes (untrained: these tests are about files)."""
    from detprune.adapters import get_adapter

    adapter = get_adapter("yolov8n.yaml")
    built = adapter.load("yolov8n.yaml", class_names=["Car", "Pedestrian", "Cyclist"])
    return adapter.save(built, tmp_path_factory.mktemp("model") / "m.pt")


@pytest.fixture()
def kitti(synthetic_kitti, tmp_path) -> Path:
    """A private copy of the synthetic KITTI set: a test that failed must not damage the shared one."""
    return Path(shutil.copytree(synthetic_kitti, tmp_path / "k"))


def test_a_report_never_lands_on_the_model(model, kitti, tmp_path, capsys):
    link = tmp_path / "hard.pt"
    os.link(model, link)  # the same file under another name
    soft = tmp_path / "soft.pt"
    soft.symlink_to(model)
    before = _hashes(model, kitti)
    for target in (model, link, soft):
        err = _error(capsys, ["eval", "--model", model, "--data", kitti, "--imgsz", "64", "--device", "cpu",
                              "--json", target])
        assert err == (f"detprune: error: --json {target}: is the input --model {model}; choose another output "
                       "path (an input is never overwritten or removed, with --exist-ok or not)")
        err = _error(capsys, ["bench", "--model", model, "--pruned", model, "--imgsz", "64", "--runs", "1",
                              "--json", target])
        assert f"--json {target}: is the input --model {model}" in err
    assert _hashes(model, kitti) == before


def test_a_report_never_lands_on_a_label_file(model, kitti, capsys):
    label = sorted((kitti / "label_2").glob("*.txt"))[0]
    before = _hashes(kitti)
    err = _error(capsys, ["eval", "--model", model, "--data", kitti, "--imgsz", "64", "--device", "cpu",
                          "--json", label])
    assert err.startswith(f"detprune: error: --json {label}: would replace a part of the input --data {kitti};")
    results = kitti / "label_2"
    err = _error(capsys, ["eval", "--model", model, "--data", kitti, "--imgsz", "64", "--device", "cpu",
                          "--kitti-results", results, "--exist-ok"])
    assert err.startswith(f"detprune: error: --kitti-results {results}: would replace a part of the input --data")
    assert _hashes(kitti) == before


def test_a_dataset_yaml_protects_the_folder_it_points_to(model, kitti, tmp_path, capsys):
    data = tmp_path / "kitti.yaml"
    data.write_text(f"format: kitti\npath: {kitti}\n")
    label = sorted((kitti / "label_2").glob("*.txt"))[0]
    before = _hashes(kitti)
    err = _error(capsys, ["eval", "--model", model, "--data", data, "--imgsz", "64", "--device", "cpu",
                          "--json", label])
    assert f"would replace a part of the input --data ({data}'s data folder) {kitti}" in err
    assert _hashes(kitti) == before


def test_an_output_folder_never_contains_an_input_with_exist_ok_or_not(model, kitti, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    inner_model = Path(shutil.copy(model, out / "pruned.pt"))
    inner_data = Path(shutil.copytree(kitti, out / "kitti"))
    before = _hashes(out)
    for extra in ([], ["--exist-ok"]):
        err = _error(capsys, ["prune", "--model", inner_model, "--target-flops", "0.8", "--imgsz", "64",
                              "--device", "cpu", "--out", out, *extra])
        assert err.startswith(f"detprune: error: --out {out}: contains the input --model {inner_model};")
        err = _error(capsys, ["prune", "--model", model, "--data", inner_data, "--target-flops", "0.8",
                              "--imgsz", "64", "--device", "cpu", "--out", out, *extra])
        assert err.startswith(f"detprune: error: --out {out}: contains the input --data {inner_data};")
    assert _hashes(out) == before


# --- two runs, one output -------------------------------------------------------------------------


def test_an_output_that_appears_while_a_run_writes_it_is_not_replaced(tmp_path):
    target = tmp_path / "report.json"
    with pytest.raises(ConcurrentWriteError, match="another run created this output while this one was writing"):
        with atomic_path(target) as tmp:
            tmp.write_text("mine")
            target.write_text("theirs")  # the other run finished first
    assert target.read_text() == "theirs" and [p.name for p in tmp_path.iterdir()] == ["report.json"]
    folder = tmp_path / "run"
    with pytest.raises(ConcurrentWriteError):
        with atomic_dir(folder) as tmp:
            (tmp / "a.txt").write_text("mine")
            folder.mkdir()
            (folder / "b.txt").write_text("theirs")
    assert [p.name for p in folder.iterdir()] == ["b.txt"]


def test_two_exports_to_one_new_output_give_exactly_one_success(model, tmp_path):
    out = tmp_path / "same.onnx"
    argv = [sys.executable, "-m", "detprune.cli", "export", "--model", str(model), "--imgsz", "64", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "YOLO_OFFLINE": "1"}
    runs = [subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env, cwd=REPO)
            for _ in range(2)]
    results = [(run.wait(timeout=300), run.stderr.read()) for run in runs]
    assert sorted(code for code, _ in results) == [0, 2], results
    failed = next(err for code, err in results if code == 2).strip().splitlines()
    assert len(failed) == 1 and ("already exists" in failed[0] or "another run created this output" in failed[0])
    assert out.is_file()


# --- temporaries of killed runs -------------------------------------------------------------------

_KILLED_FILE_WRITER = textwrap.dedent(
    """
    import sys, time
    from detprune.utils.atomic import atomic_path
    with atomic_path(sys.argv[1], suffix=".onnx") as tmp:
        print(tmp, flush=True)
        time.sleep(600)
    """
)


def test_the_temporary_file_of_a_killed_export_is_removed_by_the_next(model, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    child = subprocess.Popen([sys.executable, "-c", _KILLED_FILE_WRITER, str(out)], stdout=subprocess.PIPE, text=True)
    stale = Path(child.stdout.readline().strip())
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert stale.is_file() and stale.stat().st_size == 0 and stale.name.startswith(".m.onnx.")
    foreign = tmp_path / ".m.onnx.abc123.onnx"  # no marker in its name: never touched
    foreign.write_bytes(b"")
    live = tmp_path / stale.name.replace(f"dp{child.pid}@", f"dp{os.getpid()}@")  # a writer that is alive
    live.write_bytes(b"")
    capsys.readouterr()
    assert cli.main(["export", "--model", str(model), "--imgsz", "64", "--out", str(out)]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "interrupted run" in line]
    assert len(notes) == 1 and str(stale) in notes[0] and f"pid {child.pid}" in notes[0]
    assert not stale.exists() and foreign.exists() and live.exists() and out.is_file()


# --- precision of KITTI result files ------------------------------------------------------------


def test_kitti_results_keep_distinct_scores_distinct(synthetic_kitti, tmp_path):
    dataset = load_dataset(synthetic_kitti)
    rng = np.random.default_rng(0)
    scores = np.sort(rng.uniform(0.001, 0.001001, size=50).astype(np.float32))  # all equal to 6 decimals
    assert len(np.unique(np.round(scores, 6))) <= 2 and len(np.unique(scores)) > 40
    boxes = np.tile([[10.0, 10.0, 30.0, 40.0]], (len(scores), 1))
    predictions = [Detections(boxes, scores, np.zeros(len(scores), dtype=np.int64))] + [
        Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0)) for _ in range(len(dataset) - 1)]
    write_kitti_results(dataset, predictions, tmp_path / "results")
    read = read_kitti_results(tmp_path / "results", dataset.class_names)
    back = read[dataset.samples[0].image_id].scores
    assert np.array_equal(np.sort(back.astype(np.float32)), scores)
