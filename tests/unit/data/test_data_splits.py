"""The benchmark's hold-out split (train, a tuning split carved from it, val) and its bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from detprune.data.loader import load_dataset
from detprune.data.splits import holdout_split
from detprune.errors import BadInputError

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def scenes(synthetic_kitti):
    return load_dataset(synthetic_kitti)


def test_split_is_disjoint_complete_and_seeded(scenes):
    split = holdout_split(scenes, val=5, tune=3, seed=7)
    ids = split.ids()
    assert (len(ids["val"]), len(ids["tune"]), len(ids["fit"])) == (5, 3, len(scenes) - 8)
    every = ids["val"] + ids["tune"] + ids["fit"]
    assert sorted(every) == sorted(s.image_id for s in scenes)  # every frame used exactly once
    assert len(set(every)) == len(every)
    assert holdout_split(scenes, val=5, tune=3, seed=7).ids() == ids  # deterministic under the seed
    assert holdout_split(scenes, val=5, tune=3, seed=8).ids() != ids
    assert [s.image_id for s in split.train] == sorted(ids["fit"] + ids["tune"])  # train = fit + tune


@pytest.mark.parametrize("val, tune, message", [
    (0, 2, "a split needs at least 1 val frame, got 0"),
    (6, 6, "cannot take 6 val and 6 tuning frames from 12: nothing left to train on"),
    (2, -1, "tune must be >= 0 frames, got -1"),
    (2.5, 1, "val must be a whole number of frames, got 2.5"),
])
def test_bad_split_is_one_line(scenes, val, tune, message):
    with pytest.raises(BadInputError) as err:
        holdout_split(scenes, val=val, tune=tune)
    assert str(err.value) == message


def _benchmark(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / "kitti_accuracy.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("extra, message", [
    ("missing", "--eval-extra {tmp}/missing: no such folder"),
    ("empty", "--eval-extra {tmp}/empty: holds no labelled frames"),
])
def test_benchmark_refuses_a_bad_eval_extra_before_writing(synthetic_kitti, tmp_path, extra, message):
    empty = tmp_path / "empty"
    (empty / "image_2").mkdir(parents=True)
    (empty / "label_2").mkdir()
    image = next((synthetic_kitti / "image_2").iterdir())
    (empty / "image_2" / image.name).write_bytes(image.read_bytes())
    (empty / "label_2" / f"{image.stem}.txt").write_text("")
    out = tmp_path / "out"
    done = _benchmark(
        "--data",
        str(synthetic_kitti),
        "--val",
        "4",
        "--tune",
        "2",
        "--eval-extra",
        str(tmp_path / extra),
        "--out",
        str(out),
        cwd=tmp_path,
    )
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [f"kitti_accuracy: error: {message.format(tmp=tmp_path)}"]
    assert not out.exists()


def test_benchmark_refuses_a_split_without_val(synthetic_kitti, tmp_path):
    out = tmp_path / "out"
    done = _benchmark("--data", str(synthetic_kitti), "--val", "0", "--out", str(out), cwd=tmp_path)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == ["kitti_accuracy: error: a split needs at least 1 val frame, got 0"]
    assert not out.exists()
