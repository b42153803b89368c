"""YOLO distillation with ultralytics' own ``DistillationModel`` (``distill_model`` / ``dis``).

How ultralytics 8.4 distils (``ultralytics/nn/distill_model.py``, wired in ``engine/trainer.py``):

* the trainer wraps the student in ``DistillationModel(teacher_model=args.distill_model, ...)``
  after its setup; the teacher is frozen there (``eval()`` kept across ``train()`` calls,
  ``requires_grad=False``), so it gets no gradient and the optimizer never moves it;
* the feature levels are the Detect head's inputs (``head.f``) plus the head itself, found in
  teacher and student alike: a pruned neck keeps its levels, only their widths shrink. Each
  level's student map goes through a trained projector (1x1 conv, ReLU, 1x1 conv) from the
  student's to the teacher's channels, so unequal widths are handled by construction; what
  must agree is the number of levels and their strides (the maps are compared cell by cell);
* the loss is an L2 between projected student and teacher maps, weighted per cell by the
  teacher's highest class score there, times ``dis`` (ultralytics' default 6.0; detprune's
  ``DEFAULT_DISTILL_WEIGHT``), added to the detection loss;
* the EMA (and so every checkpoint the trainer writes) drops the teacher; ``last.pt`` keeps the
  projector for a resumed run, which rebuilds the teacher from ``args.distill_model``.

What detprune adds: the teacher is written by detprune into the run folder (``teacher.pt``)
and passed by that local path, so nothing is looked up on a hub and DDP workers and resumed
runs find it; the teacher is checked against the student before anything is written; the
final ``best.pt`` / ``last.pt`` hold the student alone (no teacher, no projector, no hooks).

Loading: ultralytics reads ``distill_model`` with ``load_checkpoint`` (``torch_safe_load``,
``weights_only=False`` unless ``ULTRALYTICS_SAFE_LOAD=1``), as it reads the start checkpoint;
both files are ones detprune itself wrote into the run folder from models it had loaded.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from detprune.errors import BadInputError

# ``dis`` when none is given. Chosen on the tuning split of the 2,000-frame KITTI benchmark
# (taylor/cost at 50% FLOPs, 10 epochs: tune mAP50 66.3 plain, 68.8 at 0.5, 69.3 at 2; ultralytics'
# own 6.0 lost 10-14 points on 75 frames); docs/benchmarks.md, the headline section.
DEFAULT_DISTILL_WEIGHT = 2.0
TEACHER_CHECKPOINT = "teacher.pt"  # beside start.pt, outside the run folder (DDP's launcher empties that)


def student_of(model: nn.Module) -> nn.Module:
    """The student inside a ``DistillationModel``; any other model itself."""
    return getattr(model, "student_model", None) or model


def without_feature_hooks(model: nn.Module) -> nn.Module:
    """``model`` (in place) without the feature-capture hooks ``DistillationModel`` puts on layers.

    The hooks are plain objects, not modules: a checkpoint holding them would need them on the
    safe-loading allow-list. ``DistillationModel`` registers them again when it is unpickled.
    """
    from ultralytics.nn.distill_model import DistillationModel

    for module in model.modules():
        DistillationModel._clear_feature_hooks(module)
    return model


def strip_distillation(model: nn.Module) -> nn.Module:
    """The student alone (no teacher, no projector, no feature hooks); any other model itself."""
    from ultralytics.nn.distill_model import DistillationModel

    if not isinstance(model, DistillationModel):
        return model
    return without_feature_hooks(model.student_model)


def feature_levels(model: nn.Module) -> tuple[int, list[float]]:
    """(number of levels, their strides) of the model's Detect head."""
    head = model.model[-1]
    strides = [float(s) for s in getattr(head, "stride", model.stride).flatten().tolist()]
    return len(head.f), strides


def check_teacher(teacher: nn.Module, student: nn.Module) -> None:
    """Refuse a teacher that is no YOLO model, predicts other classes, or has other feature levels."""
    from detprune.adapters.yolo import YoloAdapter
    from detprune.train.distill import check_teacher as check_common

    check_common(teacher, student, YoloAdapter().class_names)
    t_levels, t_strides = feature_levels(teacher)
    s_levels, s_strides = feature_levels(student)
    if (t_levels, t_strides) != (s_levels, s_strides):
        raise BadInputError(
            f"the teacher's head reads {t_levels} feature levels at strides {_fmt(t_strides)} but the student's "
            f"{s_levels} at {_fmt(s_strides)}; distil from the unpruned model with the same head levels"
        )


def _fmt(strides: list[float]) -> str:
    return "/".join(f"{s:g}" for s in strides)


def write_teacher(teacher: nn.Module, path: str | Path) -> Path:
    """The teacher as an ultralytics checkpoint (FP32), for the trainer's ``distill_model``."""
    from detprune import __version__
    from detprune.adapters.yolo import YoloAdapter

    return YoloAdapter().save(teacher, path, meta={"version": __version__, "role": "teacher"})
