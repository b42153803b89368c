"""Fresh weights are drawn under a seed: one command builds one model in every run."""

from __future__ import annotations

import torch

from detprune.adapters.rcnn import RcnnAdapter
from detprune.adapters.yolo import YoloAdapter
from rcnn_models import SMALL

CLASSES = ["car", "pedestrian", "cyclist"]


def _same_tensors(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_yaml_builds_repeat_and_leave_the_callers_generator_alone():
    adapter = YoloAdapter()
    state = torch.get_rng_state()
    first = adapter.load("yolov8n", class_names=CLASSES)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream did not move
    torch.rand(10)  # a caller that draws in between does not change the next build
    assert _same_tensors(first, adapter.load("yolov8n", class_names=CLASSES))
    other = adapter.load("yolov8n", class_names=CLASSES, init_seed=1)
    assert not torch.equal(other.model[0].conv.weight, first.model[0].conv.weight)


def test_a_new_class_head_on_a_checkpoint_repeats(tmp_path):
    adapter = YoloAdapter()
    path = adapter.save(adapter.load("yolov8n", class_names=CLASSES), tmp_path / "m.pt")
    five = ["car", "van", "truck", "pedestrian", "cyclist"]
    torch.rand(10)
    a = adapter.load(path, class_names=five)
    torch.rand(10)
    b = adapter.load(path, class_names=five)
    assert a.model[-1].nc == 5 and _same_tensors(a, b)
    c = adapter.load(path, class_names=five, init_seed=3)
    assert not torch.equal(c.model[-1].cv3[0][-1].weight, a.model[-1].cv3[0][-1].weight)


def test_faster_rcnn_box_predictor_for_new_classes_repeats(tmp_path):
    adapter = RcnnAdapter()
    weights = tmp_path / "w.pth"
    torch.save({"state_dict": adapter.load(SMALL, class_names=CLASSES).state_dict()}, weights)
    five = ["car", "van", "truck", "pedestrian", "cyclist"]
    a = adapter.load(SMALL, weights=weights, class_names=five)
    torch.rand(10)
    b = adapter.load(SMALL, weights=weights, class_names=five)
    assert _same_tensors(a.roi_heads.box_predictor, b.roi_heads.box_predictor)
