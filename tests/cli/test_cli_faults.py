"""Faults and bad input through the CLI: one line, exit 2, nothing left behind.

Read-only and full disks are real tmpfs mounts (skipped where mounting is not permitted);
the unit test of the write-refusal mapping uses a patched ``mkstemp`` so it runs everywhere.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch

from detprune import cli
from detprune.errors import DetpruneError
from detprune.utils.atomic import WORK_MARKER, atomic_path

TINY = ["--target-flops", "0.8", "--imgsz", "64", "--device", "cpu"]


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def _mount(folder: Path, options: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode(errors='replace').strip()})")
    return folder


@pytest.fixture
def read_only(tmp_path):
    folder = _mount(tmp_path / "ro", "ro,size=1m")
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


@pytest.fixture
def full_disk(tmp_path):
    folder = _mount(tmp_path / "full", "size=256k")  # far smaller than a pruned yolov8n (~0.9 MB)
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    out = tmp_path_factory.mktemp("faults") / "run"
    assert cli.main(["prune", "--model", "yolov8n.yaml", "--random-init", *TINY, "--out", str(out)]) == 0
    return out / "pruned.pt"


# --- outputs the file system refuses ---------------------------------------------------------


def test_read_only_out_is_one_line_for_every_writing_command(read_only, pruned, synthetic_kitti, capsys):
    commands = {
        "prune": ["prune", "--model", "yolov8n.yaml", "--random-init", *TINY, "--out", str(read_only / "p")],
        "score": ["score", "--model", "yolov8n.yaml", "--random-init",
                  "--criterion", "magnitude", "--imgsz", "64", "--device", "cpu",
                  "--out", str(read_only / "s")],
        "export": ["export", "--model", str(pruned), "--imgsz", "64", "--out", str(read_only / "m.onnx")],
        "data convert": ["data", "convert", str(synthetic_kitti), "--to", "yolo", "--out", str(read_only / "d")],
    }
    for name, argv in commands.items():
        capsys.readouterr()
        assert cli.main(argv) == 2, name
        err = _one_line(capsys)
        assert "read-only" in err and str(read_only) in err, (name, err)
    assert list(read_only.iterdir()) == []


@pytest.mark.parametrize("where", ["under-a-file", "proc"])
def test_out_where_nothing_can_be_created_is_one_line(tmp_path, capsys, where):
    if where == "proc" and not Path("/proc/self").is_dir():
        pytest.skip("no /proc")
    parent = tmp_path / "a-file" if where == "under-a-file" else Path("/proc")
    if where == "under-a-file":
        parent.write_text("x")
    out = parent / "out"
    assert cli.main(["prune", "--model", "yolov8n.yaml", "--random-init", *TINY, "--out", str(out)]) == 2
    err = _one_line(capsys)
    assert str(out) in err and "cannot write the output" in err


def test_full_disk_while_saving_leaves_nothing(full_disk, capsys):
    out = full_disk / "run"
    assert cli.main(["prune", "--model", "yolov8n.yaml", "--random-init", *TINY, "--out", str(out)]) == 2
    err = _one_line(capsys)
    assert str(out) in err and "disk may be full" in err
    assert list(full_disk.iterdir()) == []  # neither --out nor its hidden work folder


def test_a_refused_write_names_the_output(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / ".x.tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(DetpruneError) as info:
        with atomic_path(tmp_path / "x.json"):
            pass
    assert str(tmp_path / "x.json") in str(info.value) and "read-only" in str(info.value)


# --- export never overwrites what it did not mean to ------------------------------------------


def test_export_refuses_an_existing_file_and_never_overwrites_its_input(pruned, tmp_path, capsys):
    before = pruned.read_bytes()
    out = tmp_path / "model.onnx"
    out.write_text("keep me")
    assert cli.main(["export", "--model", str(pruned), "--imgsz", "64", "--out", str(out)]) == 2
    assert "--exist-ok" in _one_line(capsys) and out.read_text() == "keep me"
    link = tmp_path / "link.pt"
    os.link(pruned, link)  # the same file under another name
    for target in (pruned, link):
        assert cli.main(["export", "--model", str(pruned), "--imgsz", "64", "--out", str(target), "--exist-ok"]) == 2
        assert "is the input" in _one_line(capsys)
    assert pruned.read_bytes() == before
    assert cli.main(["export", "--model", str(pruned), "--imgsz", "64", "--out", str(out), "--exist-ok"]) == 0
    assert out.read_bytes()[:4] != b"keep"


# --- weights that do not initialise the model -----------------------------------------------


def test_weights_of_another_architecture_are_refused_unless_partial(tmp_path, capsys):
    from ultralytics.nn.tasks import DetectionModel

    other = tmp_path / "yolov5n_state.pt"
    torch.save({"state_dict": DetectionModel("yolov5n.yaml", verbose=False).state_dict()}, other)
    argv = ["prune", "--model", "yolov8n.yaml", "--weights", str(other), *TINY]
    assert cli.main([*argv, "--out", str(tmp_path / "a")]) == 2
    err = _one_line(capsys)
    assert "--partial-weights" in err and " of " in err and not (tmp_path / "a").exists()
    assert cli.main([*argv, "--partial-weights", "--out", str(tmp_path / "b")]) == 0
    line = [x for x in capsys.readouterr().err.splitlines() if "weights" in x]
    assert len(line) == 1 and "--partial-weights" in line[0] and " of " in line[0]


def test_backbone_and_neck_weights_load_without_the_flag(yolov5n_backbone, tmp_path, capsys):
    code = cli.main(
        ["prune", "--model", "yolov5n.yaml", "--weights", str(yolov5n_backbone), *TINY, "--out", str(tmp_path / "r")]
    )
    assert code == 0
    line = [x for x in capsys.readouterr().err.splitlines() if "weights" in x]
    # the file holds model.0 ... model.23, every backbone/neck entry (data README); the head model.24
    # starts new. Counted: the file's tensors without BatchNorm's batch counters (bookkeeping).
    state = torch.load(yolov5n_backbone, weights_only=True)["state_dict"]
    body = sum(not k.endswith("num_batches_tracked") for k in state)
    assert len(line) == 1 and f"backbone and neck loaded ({body} of {body} tensors), head new" in line[0]


def test_faster_rcnn_by_name_alone_needs_random_init(tmp_path, capsys):
    out = tmp_path / "r"
    assert cli.main(["prune", "--model", "fasterrcnn_mobilenet_v3_large_320_fpn", *TINY, "--out", str(out)]) == 2
    err = _one_line(capsys)
    assert "--random-init" in err and "--weights" in err and not out.exists()


# --- a killed run's work folder ------------------------------------------------------------------

_KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    from detprune.utils.atomic import atomic_dir
    with atomic_dir(sys.argv[1]) as tmp:
        print(tmp, flush=True)
        time.sleep(600)
    """
)


def test_stale_work_folder_of_a_killed_run_is_removed_next_time(tmp_path, capsys):
    out = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(out)], stdout=subprocess.PIPE, text=True)
    work = Path(child.stdout.readline().strip())
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert (work / WORK_MARKER).is_file()
    foreign = tmp_path / ".run.not-ours"  # looks like a work folder, has no marker: never touched
    foreign.mkdir()
    live = tmp_path / ".run.live"  # marker of a process that is alive (this one)
    live.mkdir()
    (live / WORK_MARKER).write_text(
        (work / WORK_MARKER).read_text().replace(f'"pid": {child.pid}', f'"pid": {os.getpid()}')
    )

    assert cli.main(["prune", "--model", "yolov8n.yaml", "--random-init", *TINY, "--out", str(out)]) == 0
    notes = [x for x in capsys.readouterr().err.splitlines() if "interrupted run" in x]
    assert len(notes) == 1 and str(work) in notes[0] and f"pid {child.pid}" in notes[0]
    assert not work.exists() and foreign.is_dir() and live.is_dir()
    assert (out / "pruned.pt").is_file() and not (out / WORK_MARKER).exists()


def test_last_resort_turns_a_file_system_refusal_into_one_line(monkeypatch, capsys):
    def refused(args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/out/report.json")

    monkeypatch.setattr("detprune.commands.export.run", refused)
    assert cli.main(["export", "--model", "yolov8n.yaml", "--out", "m.onnx"]) == 2
    err = _one_line(capsys)
    assert "/data/out/report.json" in err and "disk is full" in err

    def bug(args):
        raise RuntimeError("a real bug")

    monkeypatch.setattr("detprune.commands.export.run", bug)
    with pytest.raises(RuntimeError, match="a real bug"):  # not a write failure: the traceback stays
        cli.main(["export", "--model", "yolov8n.yaml", "--out", "m.onnx"])
