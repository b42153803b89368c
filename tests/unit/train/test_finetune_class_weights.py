"""Class priorities in fine-tuning: ultralytics' own per-class BCE weights (``model.class_weights``),
given by name.

Three one-epoch runs of the same pruned YOLOv5n from one seed: no weights, every weight 1, and
pedestrian at 5. The first two must end with the same weights (a weight of 1 multiplies by 1.0,
exact), the third with different ones; the loss saw exactly the table asked for; a later run
from the weighted checkpoint weighs nothing unless asked.
"""

from __future__ import annotations

import json

import pytest
import torch

from detprune.errors import BadInputError
from detprune.adapters.yolo.trainer import finetune_yolo
from finetune_toys import CLASSES, FAST, largest_difference, last_weights, pruned_yolov5n, write_dataset


def _seen_weights(store: dict, key: str):
    """A callback recording the class weights the student's loss reads once training starts."""
    from ultralytics.utils.torch_utils import unwrap_model

    def record(trainer):
        weights = getattr(unwrap_model(trainer.model), "class_weights", None)
        store[key] = None if weights is None else weights.detach().cpu().clone()

    return {"on_train_start": record}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("class_weights")
    data = write_dataset(root / "boxes")
    student, _ = pruned_yolov5n()
    seen: dict = {}
    done = {
        "plain": finetune_yolo(
            student, data, epochs=1, out_dir=root / "plain", callbacks=_seen_weights(seen, "plain"), **FAST
        ),
        "ones": finetune_yolo(
            student,
            data,
            epochs=1,
            out_dir=root / "ones",
            class_weights={name: 1 for name in CLASSES},
            callbacks=_seen_weights(seen, "ones"),
            **FAST,
        ),
        "weighted": finetune_yolo(
            student,
            data,
            epochs=1,
            out_dir=root / "weighted",
            class_weights={"pedestrian": 5},
            callbacks=_seen_weights(seen, "weighted"),
            **FAST,
        ),
    }
    again = torch.load(done["weighted"].last, map_location="cpu", weights_only=False)["model"].float()
    done["after"] = finetune_yolo(
        again, data, epochs=1, out_dir=root / "after", callbacks=_seen_weights(seen, "after"), **FAST
    )
    return {"data": data, "student": student, "runs": done, "seen": seen}


def test_class_weights_reach_the_loss_and_move_the_model(runs):
    seen, done = runs["seen"], runs["runs"]
    assert seen["plain"] is None and seen["after"] is None  # a later run does not inherit the weights
    assert seen["ones"].tolist() == [1.0, 1.0, 1.0] and seen["weighted"].tolist() == [1.0, 5.0, 1.0]
    assert largest_difference(last_weights(done["plain"]), last_weights(done["ones"])) < 1e-6
    assert largest_difference(last_weights(done["plain"]), last_weights(done["weighted"])) > 1e-4
    summary = json.loads((done["weighted"].run_dir.parent / "finetune.json").read_text())
    assert summary["class_weights"] == [1.0, 5.0, 1.0]
    assert "class_weights" not in json.loads((done["plain"].run_dir.parent / "finetune.json").read_text())


@pytest.mark.parametrize("options, message", [
    ({"class_weights": {"tram": 2}}, "unknown class(es) tram in the class weights; known: car, pedestrian, cyclist"),
    ({"class_weights": {"car": -1}}, "must be"),
    ({"class_weights": {"car": 2}, "device": "0,1"}, "one device"),
])
def test_bad_class_weights_are_one_line_errors_before_training(runs, tmp_path, options, message):
    with pytest.raises(Exception) as error:
        finetune_yolo(runs["student"], runs["data"], epochs=1, out_dir=tmp_path / "bad", **{**FAST, **options})
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "bad").exists()  # refused before anything was written


def test_class_weights_are_refused_on_resume(runs):
    with pytest.raises(BadInputError, match="not stored with a run"):
        finetune_yolo(None, None, epochs=None, out_dir=runs["runs"]["plain"].run_dir.parent, resume=True,
                      class_weights={"car": 2})


def test_cli_finetune_takes_class_weights_by_name(runs, tmp_path, capsys):
    from detprune.cli import main

    best = str(runs["runs"]["plain"].best)
    common = [
        "finetune",
        "--model",
        best,
        "--data",
        str(runs["data"]),
        "--epochs",
        "1",
        "--imgsz",
        "64",
        "--batch",
        "2",
        "--workers",
        "0",
    ]
    assert main([*common, "--out", str(tmp_path / "cli"), "--class-weights", "pedestrian=3"]) == 0
    summary = json.loads((tmp_path / "cli" / "finetune.json").read_text())
    assert summary["class_weights"] == [1.0, 3.0, 1.0]
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "bad"), "--class-weights", "tram=3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("detprune: error:") and err.count("\n") == 1 and "tram" in err
