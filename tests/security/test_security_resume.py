"""``finetune --resume`` trusts nothing its planted ``last.pt`` names (issue #25).

The resume file names a teacher checkpoint and a dataset yaml that ultralytics would load with its
own unrestricted loader and its own path rules (running a yaml's ``download:`` when a split looks
missing). Both are checked by detprune first, and ultralytics gets only the checked values.
"""

from __future__ import annotations

import hashlib

import pytest
import torch
import yaml

from detprune import cli
from detprune.adapters.yolo.trainer import RUN_NAME, TRAINER_DATA_YAML, _resume_args


class Payload:
    """Unpickling this object calls ``open(marker, "w")``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def student():
    from detprune.adapters import get_adapter

    return get_adapter("yolov8n.yaml").load("yolov8n.yaml", class_names=["Car", "Pedestrian", "Cyclist"])


def _plant(out, student, train_args: dict):
    """An unfinished run's ``last.pt`` as ultralytics writes it, with ``train_args`` of the attacker's choice."""
    last = out / RUN_NAME / "weights" / "last.pt"
    last.parent.mkdir(parents=True)
    torch.save({"epoch": 0, "ema": student, "optimizer": {"state": {}, "param_groups": []}, "updates": 1,
                "train_args": {"epochs": 3, **train_args}}, last)
    return last


def test_a_planted_teacher_is_loaded_by_the_safe_loader_first(tmp_path, student, capsys):
    marker = tmp_path / "MARKER"
    teacher = tmp_path / "teacher.pt"
    torch.save({"model": Payload(marker)}, teacher)
    out = tmp_path / "run"
    last = _plant(out, student, {"distill_model": str(teacher), "data": str(tmp_path / "none.yaml")})
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (teacher, last)}
    capsys.readouterr()
    assert cli.main(["finetune", "--resume", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"detprune: error: {teacher}: refusing to unpickle "), err
    assert "--trust-checkpoint" in err
    assert not marker.exists()
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (teacher, last)} == before


def test_a_planted_data_yaml_reaches_ultralytics_only_as_the_checked_copy(tmp_path, synthetic_kitti, student):
    """The yaml's relative ``path:`` is resolved by detprune's rule and written absolute; ``download:`` is gone;
    ultralytics' save folder is the run's, whatever the file says."""
    from detprune.data.convert import write_yolo_dataset
    from detprune.data.loader import load_train_val

    marker = tmp_path / "MARKER"
    train, val = load_train_val(synthetic_kitti)
    dataset = write_yolo_dataset(train, val, tmp_path / "data" / "yolo")
    planted = tmp_path / "data" / "planted.yaml"
    names = yaml.safe_load(dataset.read_text())["names"]
    planted.write_text(yaml.safe_dump({
        "path": "yolo", "train": "images/train", "val": "images/val", "names": names,
        "download": f"open({str(marker)!r}, 'w')",
    }))
    out = tmp_path / "run"
    _plant(out, student, {"data": str(planted), "save_dir": str(tmp_path / "elsewhere"), "project": "/"})
    args, _ = _resume_args(None, None, None, out, {})
    assert args["data"] == str(out / TRAINER_DATA_YAML)
    handed = yaml.safe_load((out / TRAINER_DATA_YAML).read_text())
    assert "download" not in handed and handed["path"] == str((tmp_path / "data" / "yolo").resolve())
    assert args["save_dir"] == str(out / RUN_NAME) and args["distill_model"] is None
    assert not marker.exists()
