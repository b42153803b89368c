"""CAR (accuracy-reduction importance): inert and vital channels on a toy detector, the greedy loop,
class-wise drops and a real YOLOv5n end to end through the pruner."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from detprune.criteria import get_criterion
from detprune.criteria.car import CAR, plot_class_drops
from detprune.pruning.car_schedule import car_prune
from detprune.errors import DetpruneError
from pruning_toys import ToyAdapter, one_thread  # noqa: F401
from saliency_toys import make_batch


class BoxNet(nn.Module):
    """A 1x1 'detector': stem copies red, green, blue and a dead plane; the head reads red (strongly)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.stem.weight.data.zero_()
        self.stem.bias.data.zero_()
        for c in range(3):
            self.stem.weight.data[c, c] = 1.0  # channel 3 stays inert: zero weights and bias
        self.mid = nn.Conv2d(4, 4, 1)
        self.mid.weight.data.copy_(torch.eye(4)[:, :, None, None])
        self.mid.bias.data.zero_()
        self.head = nn.Conv2d(4, 1, 1)
        self.head.weight.data.copy_(torch.tensor([12.0, 0.3, -0.2, 5.0])[None, :, None, None])
        self.head.bias.data.fill_(-6.0)
        self.double()

    def forward(self, x):
        return self.head(self.mid(self.stem(x)))


class BoxAdapter(ToyAdapter):
    """Loss: per-pixel BCE of 'inside an object box'; the head is protected."""

    def __init__(self):
        super().__init__(protected=("head",), imgsz=16)

    def example_inputs(self, model, imgsz=None, batch_size: int = 1):
        return super().example_inputs(model, imgsz, batch_size).double()

    def detection_loss(self, model, batch):
        logits = model(batch.images.to(torch.float64))[:, 0]
        target = torch.zeros_like(logits)
        for i, boxes in enumerate(batch.boxes):
            for x0, y0, x1, y1 in boxes.long().tolist():
                target[i, y0:y1, x0:x1] = 1.0
        return F.binary_cross_entropy_with_logits(logits, target, reduction="sum")


def box_batches():
    batches = []
    for i in range(2):
        g = torch.Generator().manual_seed(i)
        image = torch.rand(3, 16, 16, generator=g, dtype=torch.float64) * 0.3
        box = [2 + i, 3, 9 + i, 12]
        image[0, 3:12, 2 + i:9 + i] = 1.0  # objects are red
        batches.append(make_batch([image], [[box]], [[0]]))
    return batches


def test_inert_channel_scores_zero_and_the_vital_channel_scores_highest():
    car = CAR(progress=False)
    scores = car.score(BoxAdapter(), BoxNet(), box_batches())
    assert set(scores) == {"stem", "mid"}
    for name in ("stem", "mid"):
        s = scores[name]
        assert s[3].item() == 0.0, name  # removing a channel that is already zero changes nothing
        assert int(s.argmax()) == 0 and s[0] > 10 * s[1:3].abs().max(), name
    assert car.last_stats.evaluations == 1 + 8 and car.last_stats.forward_passes == 9 * 2
    assert car.last_stats.measured == {"stem": 4, "mid": 4}


def test_layers_option_and_sampling_limit_the_work():
    car = CAR(layers=["mid"], max_channels_per_layer=2, seed=1, progress=False)
    scores = car.score(BoxAdapter(), BoxNet(), box_batches())
    assert list(scores) == ["mid"] and car.last_stats.evaluations == 3
    measured = car.last_measured["mid"]
    rest = np.setdiff1d(np.arange(4), measured)
    assert len(measured) == 2 and np.allclose(scores["mid"][rest].numpy(), np.median(scores["mid"][measured].numpy()))
    with pytest.raises(DetpruneError, match="unknown layer"):
        CAR(layers=["nope"], progress=False).score(BoxAdapter(), BoxNet(), box_batches())
    with pytest.raises(DetpruneError, match="per_class needs"):
        CAR(per_class=True)


def test_scoring_leaves_the_model_unchanged():
    model = BoxNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = model(box_batches()[0].images.double())
    CAR(progress=False).score(BoxAdapter(), model, box_batches())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(out, model(box_batches()[0].images.double())) and not model.stem._forward_hooks


def test_greedy_removes_the_least_important_channels_step_by_step():
    expected = CAR(layers=["mid"], progress=False).score(BoxAdapter(), BoxNet(), box_batches())["mid"]
    model = BoxNet()
    calls = []
    result = car_prune(BoxAdapter(), model, box_batches(), steps=2, per_step=1,
                       finetune_fn=lambda m, step: calls.append(step), criterion=CAR(layers=["mid"], progress=False),
                       imgsz=16)
    assert calls == [0, 1] and len(result.steps) == 2 and result.evaluations == 5 + 4
    assert model.mid.out_channels == 2 and model.stem.out_channels == 4
    first = result.steps[0]
    lowest = int(expected.argmin())  # a channel whose removal lowers the loss scores below the inert one
    assert lowest != 0 and first.removed == {"mid": [lowest]}
    assert first.kept == {"mid": [c for c in range(4) if c != lowest]}
    assert first.scores == {f"mid:{lowest}": pytest.approx(float(expected[lowest]))}
    # the red channel, the one the head needs, is never removed: the pruned net still scores it highest
    assert model.mid.weight[:, 0].abs().sum() > 0 and model.head.weight[0, :, 0, 0].max() == 12.0


def test_class_wise_drops_and_plot(tmp_path):
    yolo = pytest.importorskip("detprune.adapters.yolo")
    adapter, model, batches = _yolo(yolo)
    car = CAR(metric="map", per_class=True, layers=["model.9.cv2.conv"], max_channels_per_layer=2, progress=False)
    scores = car.score(adapter, model, batches)
    drops = car.last_class_drops["model.9.cv2.conv"]
    assert set(drops) <= {"car", "pedestrian"} and all(len(v) == 2 for v in drops.values())
    assert torch.isfinite(scores["model.9.cv2.conv"]).all()
    if drops:
        path = plot_class_drops(car, tmp_path / "drops.png")
        assert path.stat().st_size > 0


def _yolo(yolo):
    from saliency_toys import random_image

    adapter = yolo.YoloAdapter()
    torch.manual_seed(0)
    model = adapter.prepare_for_pruning(adapter.load("yolov5n.yaml", class_names=["car", "pedestrian"])).eval()
    images = [random_image(i, 64).float() for i in range(2)]
    batches = [make_batch(images, [[[4, 8, 40, 44], [44, 30, 52, 46]], [[10, 2, 62, 60]]], [[0, 1], [0]])]
    return adapter, model, batches


def test_car_on_yolov5n_end_to_end_through_the_pruner():
    yolo = pytest.importorskip("detprune.adapters.yolo")
    adapter, model, batches = _yolo(yolo)
    layers = ["model.8.cv1.conv", "model.23.cv3.conv"]
    assert isinstance(get_criterion("car", layers=layers), CAR)
    car = CAR(layers=layers, max_channels_per_layer=3, progress=False)
    scores = car.score(adapter, model, batches)
    assert list(scores) == layers and car.last_stats.evaluations == 7
    widths = {n: model.get_submodule(n).out_channels for n in layers}
    result = car_prune(adapter, model, batches, steps=1, per_step=2, criterion=car, imgsz=64)
    step = result.steps[0]
    assert sum(len(v) for v in step.removed.values()) >= 2
    for name, channels in step.kept.items():
        assert model.get_submodule(name).out_channels == len(channels)
    assert sum(widths[n] - model.get_submodule(n).out_channels for n in layers) >= 1
