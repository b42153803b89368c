"""Loading a .pt never runs code stored in it, at every CLI entry point; damaged files say so.

The payload is a real pruned checkpoint with one extra entry whose ``__reduce__`` would open
(and so create) a marker file when unpickled: the marker appearing means code in the file ran.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from detprune import cli
from detprune.errors import BadInputError
from detprune.utils.checkpoints import load_policy, load_torch_file


class Payload:
    """Unpickling this object calls ``open(marker, "w")``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """A pruned yolov8n checkpoint written by 'detprune prune' (data-free magnitude criterion)."""
    out = tmp_path_factory.mktemp("safety") / "run"
    code = cli.main(["prune", "--model", "yolov8n.yaml", "--random-init", "--target-flops", "0.7", "--imgsz", "64",
                     "--device", "cpu", "--out", str(out)])
    assert code == 0
    return out / "pruned.pt"


def _evil(pruned, folder, marker, name="evil.pt"):
    """The pruned checkpoint plus a payload entry (read here with the unrestricted loader: it is ours)."""
    ckpt = torch.load(pruned, map_location="cpu", weights_only=False)
    ckpt["payload"] = Payload(marker)
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_own_checkpoint_loads_with_the_restricted_unpickler(pruned):
    ckpt = load_torch_file(pruned)
    assert isinstance(ckpt["model"], torch.nn.Module)
    # plain weights_only=True refuses it: the allow-list is what makes it load
    with pytest.raises(Exception, match="Unsupported global|not an allowed global|GLOBAL"):
        torch.load(pruned, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("entry", ["prune", "prune-weights", "score", "export", "bench", "finetune", "resume"])
def test_payload_never_runs_and_the_error_names_the_global_and_the_flag(pruned, tmp_path, capsys, entry):
    marker = tmp_path / "MARKER"
    evil = _evil(pruned, tmp_path, marker)
    out = tmp_path / "out"
    argv = {
        "prune": [
            "prune",
            "--model",
            str(evil),
            "--target-flops",
            "0.8",
            "--imgsz",
            "64",
            "--device",
            "cpu",
            "--out",
            str(out),
        ],
        "prune-weights": [
            "prune",
            "--model",
            "yolov8n.yaml",
            "--weights",
            str(evil),
            "--target-flops",
            "0.8",
            "--imgsz",
            "64",
            "--device",
            "cpu",
            "--out",
            str(out),
        ],
        "score": [
            "score",
            "--model",
            str(evil),
            "--criterion",
            "magnitude",
            "--imgsz",
            "64",
            "--device",
            "cpu",
            "--out",
            str(out),
        ],
        "export": ["export", "--model", str(evil), "--imgsz", "64", "--out", str(tmp_path / "evil.onnx")],
        "bench": [
            "bench",
            "--model",
            "yolov8n.yaml",
            "--pruned",
            str(evil),
            "--imgsz",
            "64",
            "--runs",
            "1",
            "--warmup",
            "0",
        ],
        "finetune": [
            "finetune",
            "--model",
            str(evil),
            "--data",
            str(tmp_path / "data.yaml"),
            "--epochs",
            "1",
            "--out",
            str(out),
        ],
        "resume": ["finetune", "--resume", "--out", str(out)],
    }[entry]
    if entry == "resume":  # a last.pt planted where an unfinished run would keep it
        _evil(pruned, out / "train" / "weights", marker, name="last.pt")
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = _one_line(capsys)
    assert "--trust-checkpoint" in err and "open" in err  # the refused global: builtins.open / io.open
    assert not marker.exists()
    assert not (tmp_path / "evil.onnx").exists() and not (out / "pruned.pt").exists()


def test_trust_checkpoint_switches_to_the_unrestricted_loader_with_a_warning(pruned, tmp_path, capsys):
    marker = tmp_path / "MARKER"
    evil = _evil(pruned, tmp_path, marker)
    with load_policy(trust_checkpoint=True):
        ckpt = load_torch_file(evil)
    assert marker.exists()  # the flag really means it: the payload ran
    assert isinstance(ckpt["model"], torch.nn.Module)
    warning = capsys.readouterr().err.strip()
    assert len(warning.splitlines()) == 1 and "--trust-checkpoint" in warning and "warning" in warning


def test_truncated_checkpoint_says_truncated_not_unknown_model(pruned, tmp_path, capsys):
    half = tmp_path / "pruned.pt"
    data = pruned.read_bytes()
    half.write_bytes(data[: len(data) // 2])
    for argv in (
        ["export", "--model", str(half), "--imgsz", "64", "--out", str(tmp_path / "m.onnx")],
        ["prune", "--model", str(half), "--target-flops", "0.8", "--imgsz", "64", "--out", str(tmp_path / "o")],
    ):
        assert cli.main(argv) == 2
        err = _one_line(capsys)
        assert "truncated or corrupt" in err and "no adapter" not in err and str(half) in err


def test_damaged_weights_and_legacy_pickles_are_one_line_errors(tmp_path):
    marker = tmp_path / "MARKER"
    legacy = tmp_path / "legacy.pt"
    torch.save({"x": Payload(marker)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(BadInputError, match="refusing to unpickle .*open.*--trust-checkpoint"):
        load_torch_file(legacy)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(BadInputError, match="truncated or corrupt"):
        load_torch_file(empty)
    assert not marker.exists()


class ModelCall:
    """Unpickling this calls DetectionModel(cfg): ultralytics' yaml parser ``eval``s the activation,
    here one that opens (creates) a marker file. Allowed classes may only be ``__new__``-ed."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        from ultralytics.nn.tasks import DetectionModel, yaml_model_load

        cfg = {**yaml_model_load("yolov8n.yaml"), "activation": f"open({self.marker!r}, 'w')"}
        return (DetectionModel, (cfg,))


def test_an_allowed_class_called_with_arguments_from_the_file_is_refused(tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "ctor.pt"
    torch.save({"model": ModelCall(marker)}, path)
    with pytest.raises(BadInputError, match="DetectionModel.*constructor.*--trust-checkpoint"):
        load_torch_file(path)
    assert not marker.exists()
    # the same file unpickled unrestricted (in another process: the constructor changes ultralytics'
    # process-wide default activation) runs the constructor, so the refusal is what kept the marker away
    subprocess.run([sys.executable, "-c", "import sys, torch; torch.load(sys.argv[1], weights_only=False)", str(path)],
                   capture_output=True, env={**os.environ, "YOLO_OFFLINE": "1"}, check=False)
    assert marker.exists()
