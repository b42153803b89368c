"""Faster R-CNN distillation in detprune's SGD loop: box-masked FPN imitation plus RoI class KL.

The unpruned model (teacher) is frozen: eval mode, ``requires_grad=False``, run under
``no_grad``. Two terms join torchvision's four training losses, their sum times ``weight``
(default 1.0):

* **feature imitation** on every FPN level: per cell, the mean over channels of
  ``(adapter(student) - teacher)^2``, weighted by the ground-truth box map of
  :mod:`detprune.criteria.weight_map` (each box unit mass, a ring of context at half weight,
  DontCare cells zero; the map the saliency criterion draws) and divided by the map's total.
  The student imitates the teacher where the objects are, not on the road and sky that fill
  most of a driving frame.
* **class KL** on the RoIs the student's box head trains on (its sampled proposals plus the
  ground truth): the teacher's box head is run on the same boxes over the teacher's own FPN
  maps, and ``KL(teacher || student)`` of the class distributions (temperature 1) is averaged
  over the RoIs.

Why an adapter: pruning may narrow the FPN (all levels share one width, which the RPN head and
the box head read), so the student's maps can have fewer channels than the teacher's. A 1x1
conv from the student's to the teacher's width, shared by the levels, is trained with the
student and discarded after (never saved). Imitating only where widths match would drop the
term exactly for the pruned models that need it. With equal widths the adapter starts as the
identity.

Nothing of torchvision's forward is re-implemented: hooks on the student record the
normalised input batch, its FPN maps, the RoIs its box head pools and its class logits while
``adapter.detection_loss`` runs the model as usual.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from detprune.criteria.weight_map import WeightMapSpec, batch_weight_maps
from detprune.data.batch import Batch
from detprune.errors import BadInputError, DetpruneError

DEFAULT_WEIGHT = 1.0


def fpn_width(model: nn.Module) -> int:
    """Channels of the FPN maps (every level has the same)."""
    from detprune.adapters.rcnn.coupling import fpn_width_layers

    producers, _ = fpn_width_layers(model)
    return int(producers[0].out_channels)


def check_teacher(teacher: nn.Module, student: nn.Module) -> None:
    """Refuse a teacher of another family, another class set or another Faster R-CNN architecture."""
    from detprune.adapters.rcnn import RcnnAdapter
    from detprune.train.distill import check_teacher as check_common

    adapter = RcnnAdapter()
    check_common(teacher, student, adapter.class_names)
    t_arch, s_arch = adapter.architecture(teacher), adapter.architecture(student)
    if t_arch != s_arch:
        raise BadInputError(
            f"the teacher is a {t_arch} but the student a {s_arch}: their FPN levels differ; "
            "distil from the unpruned model of the same architecture"
        )


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no gradient, in place."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class RcnnDistiller(nn.Module):
    """The distillation loss of one training step; its only parameters are the adapter's.

    The teacher is held outside the module tree, so ``parameters()`` and ``state_dict()`` are
    the adapter's alone and the teacher cannot reach an optimizer or a checkpoint.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, weight: float = DEFAULT_WEIGHT,
                 spec: WeightMapSpec = WeightMapSpec()) -> None:
        super().__init__()
        check_teacher(teacher, student)
        self._teacher = (freeze(teacher),)  # a tuple: not registered as a submodule
        student_width, teacher_width = fpn_width(student), fpn_width(teacher)
        self.adapter = nn.Conv2d(student_width, teacher_width, kernel_size=1)
        if student_width == teacher_width:
            with torch.no_grad():
                self.adapter.weight.copy_(torch.eye(teacher_width).view(teacher_width, teacher_width, 1, 1))
                self.adapter.bias.zero_()
        self.weight = float(weight)
        self.spec = spec
        self._seen: dict = {}

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    @contextlib.contextmanager
    def capturing(self, student: nn.Module) -> Iterator[None]:
        """Within the block, the student's forward passes record what :meth:`loss` compares."""
        seen = self._seen

        def images(_module, args):
            seen["images"] = args[0]

        def features(_module, _args, output):
            seen["features"] = output

        def rois(_module, args):
            seen["proposals"], seen["image_shapes"] = args[1], args[2]

        def logits(_module, _args, output):
            seen["logits"] = output[0]

        heads = student.roi_heads
        handles = [
            student.backbone.register_forward_pre_hook(images),
            student.backbone.register_forward_hook(features),
            heads.box_roi_pool.register_forward_pre_hook(rois),
            heads.box_predictor.register_forward_hook(logits),
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            seen.clear()

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """``weight * (imitation + kl)`` of the student pass just run, and both terms as floats."""
        seen = dict(self._seen)
        self._seen.clear()  # in place: the hooks hold this dict
        missing = {"images", "features", "proposals", "logits"} - set(seen)
        if missing:
            raise DetpruneError(f"distillation saw no {', '.join(sorted(missing))} of the student's forward pass")
        teacher = self.teacher
        with torch.no_grad():
            teacher_maps = teacher.backbone(seen["images"])
            heads = teacher.roi_heads
            pooled = heads.box_roi_pool(teacher_maps, seen["proposals"], seen["image_shapes"])
            teacher_logits = heads.box_predictor(heads.box_head(pooled))[0]
        imitation = self._imitation(seen["features"], teacher_maps, batch, tuple(seen["images"].shape[-2:]))
        kl = F.kl_div(F.log_softmax(seen["logits"].float(), dim=1), F.softmax(teacher_logits.float(), dim=1),
                      reduction="batchmean")
        return self.weight * (imitation + kl), {"imitation": float(imitation.detach()), "kl": float(kl.detach())}

    def _imitation(
        self, student_maps: dict, teacher_maps: dict, batch: Batch, input_hw: tuple[int, int]
    ) -> torch.Tensor:
        """Box-weighted mean squared difference of the adapted student maps, averaged over levels."""
        ignore = [
            flags.reshape(-1).bool() | (labels.reshape(-1) < 0) for flags, labels in zip(batch.ignore, batch.labels)
        ]
        terms = []
        for level, teacher_map in teacher_maps.items():
            student_map = self.adapter(student_maps[level].float())
            cells = (student_map - teacher_map.float()).pow(2).mean(dim=1)  # (B, h, w)
            weights = batch_weight_maps(batch.boxes, ignore, input_hw, cells.shape[-2:], self.spec, device=cells.device)
            weights = weights.to(cells.dtype)
            terms.append((cells * weights).sum() / weights.sum().clamp_min(1e-12))
        return torch.stack(terms).mean()
