"""Knowledge distillation from the unpruned model while the pruned one is fine-tuned.

YOLO: a YOLOv5n pruned to half its channels learns from an unpruned YOLOv5n (other random
weights, so the two disagree) with ultralytics' DistillationModel; one CPU epoch of 4 images
at 64 px. Faster R-CNN: a MobileNetV3-320 with every group (its FPN too) cut by half learns
from an unpruned one in detprune's SGD loop; one iteration of 2 images at 96 x 160.

"Distillation enters the update" is shown by three runs from the same seed: without a teacher,
with a teacher at weight 0, and at the default weight. The first two must end with the same
weights to float tolerance (the wrapper itself changes nothing), the third with different ones.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import torch

from detprune.cli import main
from detprune.errors import BadInputError
from detprune.adapters.yolo.trainer import finetune_yolo
from detprune.train.structure import tensor_shapes
from finetune_toys import CLASSES, FAST, largest_difference, last_weights, pruned_yolov5n, write_dataset


def yolo_model(cfg: str = "yolov5n.yaml", names=CLASSES, seed: int = 1):
    from ultralytics.nn.tasks import DetectionModel

    from detprune.adapters.yolo.objective import default_hyperparameters

    torch.manual_seed(seed)
    model = DetectionModel(cfg, nc=len(names), verbose=False)
    model.names = dict(enumerate(names))
    model.args = default_hyperparameters()
    return model


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- YOLO ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def yolo(tmp_path_factory):
    """Three one-epoch runs of the same pruned student: no teacher, teacher at weight 0, default weight."""
    from ultralytics.utils.torch_utils import unwrap_model

    root = tmp_path_factory.mktemp("distill_yolo")
    data = write_dataset(root / "boxes")
    student, _ = pruned_yolov5n()
    teacher = yolo_model()
    original = {k: v.clone() for k, v in teacher.state_dict().items()}
    inside: dict = {}

    def record_teacher(trainer):  # the teacher the trainer actually used, after its last step
        wrapper = unwrap_model(trainer.model)
        inside["teacher"] = {k: v.detach().cpu().clone() for k, v in wrapper.teacher_model.state_dict().items()}
        inside["grads"] = [p.grad for p in wrapper.teacher_model.parameters()]
        inside["requires_grad"] = [p.requires_grad for p in wrapper.teacher_model.parameters()]
        inside["training"] = wrapper.teacher_model.training

    runs = {
        "plain": finetune_yolo(student, data, epochs=1, out_dir=root / "plain", **FAST),
        "weight0": finetune_yolo(student, data, epochs=1, out_dir=root / "weight0", teacher=teacher,
                                 distill_weight=0.0, **FAST),
        "distilled": finetune_yolo(student, data, epochs=1, out_dir=root / "distilled", teacher=teacher,
                                   callbacks={"on_train_end": record_teacher}, **FAST),
    }
    return {"root": root, "data": data, "student": student, "teacher": teacher, "original": original,
            "inside": inside, "runs": runs}


def test_yolo_teacher_is_frozen_and_unchanged(yolo):
    inside = yolo["inside"]
    assert inside["grads"] and all(g is None for g in inside["grads"])
    assert not any(inside["requires_grad"]) and inside["training"] is False
    assert same_weights(inside["teacher"], yolo["original"])
    assert same_weights(yolo["teacher"].state_dict(), yolo["original"])  # the caller's teacher too


def test_yolo_distillation_loss_is_non_zero_and_moves_the_student(yolo):
    import csv

    runs = yolo["runs"]
    rows = list(csv.DictReader((runs["distilled"].run_dir / "results.csv").open()))
    assert float(rows[-1]["train/dis_loss"]) > 0
    # the wrapper alone changes nothing but float summation order (seen after other tests left
    # torch's deterministic mode off: 1e-8); the teacher's loss moves the weights far more
    assert largest_difference(last_weights(runs["plain"]), last_weights(runs["weight0"])) < 1e-6
    assert largest_difference(last_weights(runs["weight0"]), last_weights(runs["distilled"])) > 1e-4


def test_yolo_checkpoints_hold_the_pruned_student_only(yolo):
    from detprune.adapters.yolo.distill import DEFAULT_DISTILL_WEIGHT

    result, student = yolo["runs"]["distilled"], yolo["student"]
    for path in (result.best, result.last):
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        assert not [n for n in names if "distill" in n], names  # no DistillationModel, no feature hooks
        model = torch.load(path, map_location="cpu", weights_only=False)["model"]
        assert tensor_shapes(model) == tensor_shapes(student)
        assert not any(m._forward_hooks for m in model.modules())
    assert tensor_shapes(result.model) == tensor_shapes(student)
    summary = json.loads((result.run_dir.parent / "finetune.json").read_text())
    assert summary["distillation"] == {
        "teacher": str(result.run_dir.parent / "teacher.pt"),
        "weight": DEFAULT_DISTILL_WEIGHT,  # detprune's default, not ultralytics' 6.0
    }
    assert json.loads((yolo["runs"]["plain"].run_dir.parent / "finetune.json").read_text())["distillation"] is None


def test_yolo_checkpoint_reloads_in_a_fresh_process(yolo):
    result, student = yolo["runs"]["distilled"], yolo["student"]
    code = (
        "import sys, numpy as np; from ultralytics import YOLO; m = YOLO(sys.argv[1]); "
        "m.predict(np.zeros((64, 64, 3), np.uint8), imgsz=64, verbose=False); "
        "print(type(m.model).__name__, sum(p.numel() for p in m.model.parameters()))"
    )
    env = {**os.environ, "YOLO_OFFLINE": "1", "YOLO_VERBOSE": "False"}
    done = subprocess.run(
        [sys.executable, "-c", code, str(result.best)], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["DetectionModel", str(sum(p.numel() for p in student.parameters()))]


@pytest.mark.parametrize("teacher, message", [
    (lambda: yolo_model(names=["car", "van", "truck"]), "classes"),
    (lambda: yolo_model(names=["car", "pedestrian"]), "2 classes"),
    (lambda: yolo_model("yolov8n-p2.yaml"), "feature levels"),
    (lambda: __import__("rcnn_models").small_model(), "rcnn model but the student a yolo"),
])
def test_yolo_bad_teacher_is_refused_before_anything_is_written(yolo, tmp_path, teacher, message):
    out = tmp_path / "run"
    with pytest.raises(BadInputError, match=message):
        finetune_yolo(yolo["student"], yolo["data"], epochs=1, out_dir=out, teacher=teacher(), **FAST)
    assert not out.exists()


def test_yolo_distillation_arguments(yolo, tmp_path):
    student, data = yolo["student"], yolo["data"]
    with pytest.raises(BadInputError, match="needs a teacher"):
        finetune_yolo(student, data, epochs=1, out_dir=tmp_path / "a", distill_weight=1.0, **FAST)
    with pytest.raises(BadInputError, match=">= 0"):
        finetune_yolo(
            student, data, epochs=1, out_dir=tmp_path / "b", teacher=yolo["teacher"], distill_weight=-1.0, **FAST
        )
    with pytest.raises(BadInputError, match="teacher="):
        finetune_yolo(student, data, epochs=1, out_dir=tmp_path / "c", distill_model="yolo26n.pt", **FAST)
    assert not any(tmp_path.iterdir())


# --- the commands ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(yolo):
    """The student and possible teachers as files, as the commands read them."""
    from detprune.adapters.rcnn import RcnnAdapter
    from detprune.adapters.yolo import YoloAdapter
    from rcnn_models import small_model

    root = yolo["root"] / "files"
    save = YoloAdapter().save
    return {
        "student": save(yolo["student"], root / "student.pt"),
        "teacher": save(yolo["teacher"], root / "teacher.pt"),
        "classes": save(yolo_model(names=["car", "van", "truck"]), root / "other_classes.pt"),
        "levels": save(yolo_model("yolov8n-p2.yaml"), root / "p2.pt"),
        "rcnn": RcnnAdapter().save(small_model(), root / "fasterrcnn_mobilenet_v3_large_320_fpn.pt"),
    }


def test_cli_finetune_distils_from_teacher(yolo, checkpoints, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["finetune", "--model", str(checkpoints["student"]), "--teacher", str(checkpoints["teacher"]),
                 "--data", str(yolo["data"]), "--epochs", "1", "--imgsz", "64", "--batch", "2", "--workers", "0",
                 "--distill-weight", "2.5", "--out", str(out)])
    assert code == 0
    assert f"distilling from {checkpoints['teacher']}, weight 2.5" in capsys.readouterr().out
    assert json.loads((out / "finetune.json").read_text())["distillation"]["weight"] == 2.5
    saved = torch.load(out / "train" / "weights" / "best.pt", map_location="cpu", weights_only=False)["model"]
    assert tensor_shapes(saved) == tensor_shapes(yolo["student"])


@pytest.mark.parametrize("flags, message", [
    (["--distill"], "no --teacher"),
    (["--distill-weight", "2"], "--distill-weight needs distillation"),
    (["--teacher", "{teacher}", "--no-distill", "--distill-weight", "2"], "--distill-weight needs distillation"),
    (["--teacher", "{classes}"], "classes"),
    (["--teacher", "{levels}"], "feature levels"),
    (["--teacher", "{rcnn}"], "rcnn model but the student a yolo"),
])
def test_cli_finetune_bad_distillation_is_one_line(yolo, checkpoints, tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    flags = [f.format(**{k: str(v) for k, v in checkpoints.items()}) for f in flags]
    code = main(["finetune", "--model", str(checkpoints["student"]), "--data", str(yolo["data"]), "--epochs", "1",
                 "--imgsz", "64", "--out", str(out), *flags])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("detprune: error:") and err.count("\n") == 1 and message in err, err
    assert not out.exists()


@pytest.mark.parametrize("flags, message", [
    (["--distill"], "give --finetune-epochs"),
    (["--finetune-epochs", "1", "--distill-weight", "-1"], ">= 0"),
    (["--finetune-epochs", "1", "--no-distill", "--distill-weight", "1"], "--distill-weight needs distillation"),
])
def test_cli_prune_bad_distillation_is_one_line(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    code = main(["prune", "--model", "yolov5n.yaml", "--random-init", "--data", str(tmp_path), "--target-flops", "0.5",
                 "--out", str(out), *flags])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("detprune: error:") and err.count("\n") == 1 and message in err, err
    assert not out.exists()


# --- Faster R-CNN ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rcnn(tmp_path_factory):
    """A Faster R-CNN with every group (the FPN too) halved, fine-tuned three ways for one iteration."""
    import detprune
    from detprune.adapters.rcnn import RcnnAdapter
    from detprune.data.kitti import read_kitti
    from detprune.data.synthetic import generate_scenes
    from detprune.adapters.rcnn.distill import fpn_width
    from rcnn_models import small_model

    adapter = RcnnAdapter()
    root = tmp_path_factory.mktemp("distill_rcnn")
    generate_scenes(root / "kitti", num_images=2, seed=0, width=160, height=96)
    data = read_kitti(root / "kitti", progress=False)
    teacher = adapter.prepare_for_pruning(small_model(seed=0))
    student = adapter.prepare_for_pruning(small_model(seed=1))  # other weights: the teacher disagrees
    scores = detprune.score(student, criterion="magnitude", adapter=adapter)
    detprune.prune(student, scores, adapter=adapter, ratio=0.5, allocation="uniform", imgsz=(96, 160))
    assert fpn_width(student) < fpn_width(teacher)  # the adapter conv must bridge the widths
    original = {k: v.clone() for k, v in teacher.state_dict().items()}
    options = dict(imgsz=(96, 160), batch_size=2, lr=0.01, warmup_iters=1, max_iters_per_epoch=1, progress=False)
    runs = {}
    for name, distill in (("plain", {}), ("weight0", {"teacher": teacher, "distill_weight": 0.0}),
                          ("distilled", {"teacher": teacher})):
        trained = adapter.finetune(copy.deepcopy(student), data, epochs=1, out_dir=root / name, **distill, **options)
        runs[name] = {"model": trained, "out": root / name}
    return {
        "adapter": adapter,
        "teacher": teacher,
        "original": original,
        "student": student,
        "runs": runs,
        "data": data,
    }


def test_rcnn_teacher_is_frozen_and_unchanged(rcnn):
    teacher = rcnn["teacher"]
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not teacher.training
    assert same_weights(teacher.state_dict(), rcnn["original"])


def test_rcnn_distillation_terms_are_non_zero_and_move_the_student(rcnn):
    runs = rcnn["runs"]
    log = json.loads((runs["distilled"]["out"] / "train_log.json").read_text())
    terms = log["epochs"][0]["distill"]
    assert terms["imitation"] > 0 and terms["kl"] > 0
    assert log["options"]["distill_weight"] == 1.0
    assert "distill" not in json.loads((runs["plain"]["out"] / "train_log.json").read_text())["epochs"][0]
    weights = {name: run["model"].state_dict() for name, run in runs.items()}
    assert same_weights(weights["plain"], weights["weight0"])
    assert not same_weights(weights["weight0"], weights["distilled"])


def test_rcnn_checkpoint_reloads_as_the_pruned_student_alone(rcnn):
    from detprune.adapters.rcnn.checkpoint import layer_specs

    adapter, runs = rcnn["adapter"], rcnn["runs"]
    reloaded = adapter.load_checkpoint(runs["distilled"]["out"] / "last.pt")
    assert layer_specs(reloaded) == layer_specs(runs["plain"]["model"])
    saved = torch.load(runs["distilled"]["out"] / "last.pt", map_location="cpu", weights_only=True)["state_dict"]
    plain = torch.load(runs["plain"]["out"] / "last.pt", map_location="cpu", weights_only=True)["state_dict"]
    assert saved.keys() == plain.keys()  # no adapter conv, no teacher tensors
    assert same_weights(reloaded.state_dict(), runs["distilled"]["model"].state_dict())


@pytest.mark.parametrize(
    "teacher, message",
    [
        (lambda: yolo_model(), "yolo model but the student a rcnn"),
        (lambda: __import__("rcnn_models").small_model("fasterrcnn_mobilenet_v3_large_fpn"), "architecture"),
        (
            lambda: __import__("rcnn_models").RcnnAdapter().load(__import__("rcnn_models").SMALL, class_names=["car"]),
            "classes",
        ),
    ],
)
def test_rcnn_bad_teacher_is_refused_before_anything_is_written(rcnn, tmp_path, teacher, message):
    out = tmp_path / "run"
    with pytest.raises(BadInputError, match=message):
        rcnn["adapter"].finetune(copy.deepcopy(rcnn["student"]), rcnn["data"], epochs=1, out_dir=out,
                                 teacher=teacher(), progress=False)
    assert not out.exists()


def test_prune_distils_only_when_asked():
    """The benchmark's evidence set the default: off unless --distill (docs/benchmarks.md)."""
    from argparse import Namespace

    from detprune.workflow.config import distils

    run = dict(finetune_epochs=5, schedule="one-shot")
    assert not distils(Namespace(distill=None, **run))
    assert not distils(Namespace(distill=False, **run))
    assert distils(Namespace(distill=True, **run))
    assert not distils(Namespace(distill=True, finetune_epochs=0, schedule="one-shot"))
