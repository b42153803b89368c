"""``make demo`` works every time it is typed: after a finished run, after a killed one."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

from detprune.cli import main

from pruning_toys import one_thread  # noqa: F401

TINY = [
    "--num-images",
    "4",
    "--val-images",
    "2",
    "--width",
    "320",
    "--height",
    "96",
    "--imgsz",
    "64",
    "--batch",
    "2",
    "--baseline-epochs",
    "1",
    "--finetune-epochs",
    "1",
    "--latency-runs",
    "1",
    "--criteria",
    "l1",
]


def _demo(out: Path, *flags: str) -> tuple[int, str]:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["demo", "--out", str(out), *TINY, *flags])
    return code, printed.getvalue()


def test_a_second_demo_replaces_the_first_and_reuses_its_baseline(tmp_path):
    out = tmp_path / "demo"
    code, first = _demo(out, "--exist-ok")  # as the Makefile runs it, on a fresh clone
    assert code == 0 and "first epoch:" in first and "the whole demo about" in first
    code, second = _demo(out, "--exist-ok")
    assert code == 0 and "is reused" in second
    assert json.loads((out / "report.json").read_text())["run"]["baseline_training"]["epochs"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no work folder left behind


def test_a_killed_demo_leaves_nothing_the_next_one_trips_on(tmp_path):
    out = tmp_path / "demo"
    # what the earlier demo left when killed mid-run: its config and half its scenes
    (out / "data" / "image_2").mkdir(parents=True)
    (out / "config.yaml").write_text("out: demo\n")
    code, printed = _demo(out, "--exist-ok")
    assert code == 0 and (out / "report.md").is_file()
    assert not (out / "data" / "image_2").exists() or any((out / "data" / "image_2").iterdir())


def test_the_makefile_runs_the_demo_so_that_it_can_run_again():
    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    line = re.search(r"^demo:.*\n\t(.+)$", makefile, re.M).group(1)
    assert "detprune demo" in line and "--exist-ok" in line
