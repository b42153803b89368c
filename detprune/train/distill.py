"""Knowledge distillation from the unpruned model while the pruned one is fine-tuned: shared rules.

The unpruned model is the teacher: frozen (eval mode, no gradient), it only supplies targets.
The pruned model, the student, learns from the labelled frames and from the teacher at once.
Each family distils in its own trainer: YOLO through ultralytics' ``DistillationModel``
(:mod:`detprune.adapters.yolo.distill`), Faster R-CNN in detprune's SGD loop
(:mod:`detprune.adapters.rcnn.distill`). This module holds what both share: whether a run
distils, and the checks that a teacher fits the student (same family, same classes); each
family then checks that the feature levels match.
"""

from __future__ import annotations

import math

from torch import nn

from detprune.errors import BadInputError


def family_of(model: nn.Module) -> str | None:
    """The registered family that owns ``model`` (``"yolo"``, ``"rcnn"``, ...) or None."""
    from detprune.adapters.base import adapter_for_model

    adapter = adapter_for_model(model)
    return adapter.family if adapter is not None else None


def use_distillation(distill: bool | None, has_teacher: bool, why_none: str = "no teacher was given") -> bool:
    """Whether the run distils: on by default when a teacher is at hand, off without one.

    ``distill=True`` without a teacher is an error (the user asked for something impossible);
    ``distill=None`` means "by default".
    """
    if distill is None:
        return has_teacher
    if distill and not has_teacher:
        raise BadInputError(f"distillation needs the unpruned model as teacher, but {why_none}")
    return bool(distill)


def check_weight(weight: float | None) -> None:
    if weight is None:
        return
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
        raise BadInputError(f"the distillation weight must be a finite number >= 0, got {weight!r}")


def check_teacher(teacher: nn.Module, student: nn.Module, class_names) -> None:
    """Refuse a teacher of another detector family or another class set than the student.

    ``class_names(model)`` lists a model's classes (the adapter's ``class_names``).
    """
    teacher_family, student_family = family_of(teacher), family_of(student)
    if teacher_family != student_family:
        raise BadInputError(
            f"the teacher is a {teacher_family or type(teacher).__name__} model but the student a "
            f"{student_family or type(student).__name__} one; distil from the unpruned model of the same family"
        )
    teacher_names, student_names = list(class_names(teacher)), list(class_names(student))
    if teacher_names != student_names:
        raise BadInputError(
            f"the teacher predicts {len(teacher_names)} classes {teacher_names} but the student "
            f"{len(student_names)} {student_names}; distil from the unpruned model of the same classes"
        )
    if teacher is student:
        raise BadInputError("the teacher is the student itself; give the unpruned model as teacher")


def check_pair(teacher: nn.Module, student: nn.Module) -> None:
    """All checks of a teacher against a student, for whichever family the student is."""
    from detprune.adapters.base import adapter_for_model

    adapter = adapter_for_model(student)
    if family_of(teacher) != (adapter.family if adapter is not None else None):
        check_teacher(teacher, student, lambda model: [])  # raises the family mismatch
    if adapter is None:
        raise BadInputError(f"{type(student).__name__}: no detector family owns this model; it cannot distil")
    adapter.check_teacher(teacher, student)
