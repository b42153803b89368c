"""RcnnAdapter on a real (randomly initialised) MobileNetV3-320 Faster R-CNN at tiny sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from detprune.adapters import get_adapter
from detprune.adapters.rcnn import checkpoint as ckpt
from detprune.adapters.rcnn import RcnnAdapter
from detprune.adapters.rcnn.coupling import dense_outputs
from detprune.adapters.rcnn.objective import input_size_kept, postprocess_settings, targets_of
from detprune.adapters.rcnn.rewrites import count_frozen, freeze_batchnorm, unfreeze_batchnorm
from detprune.errors import BadInputError, UnsupportedError
from rcnn_models import (
    CLASSES, SMALL, activation_widths, assert_same, make_batch, out_width, randomize_norms, shrink_for_cpu, small_model,
)

ADAPTER = RcnnAdapter()


@pytest.fixture(scope="module")
def model():
    return small_model()


def test_handles_names_files_and_nothing_else(tmp_path):
    assert RcnnAdapter.handles("fasterrcnn_resnet50_fpn")
    assert RcnnAdapter.handles("fasterrcnn_mobilenet_v3_large_320_fpn")
    assert RcnnAdapter.handles("fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth")
    assert not RcnnAdapter.handles("yolov8n")
    assert not RcnnAdapter.handles("retinanet_resnet50_fpn")
    assert not RcnnAdapter.handles(tmp_path / "model.onnx")
    assert ckpt.architecture_of_file(tmp_path / "fasterrcnn_resnet50_fpn_v2_x.pth") == "fasterrcnn_resnet50_fpn_v2"
    assert ckpt.architecture_of_file(tmp_path / "fasterrcnn_resnet50_fpn_coco.pth") == "fasterrcnn_resnet50_fpn"
    assert isinstance(get_adapter("fasterrcnn_mobilenet_v3_large_fpn"), RcnnAdapter)


def test_bad_weights_are_one_line_errors(tmp_path, model):
    with pytest.raises(BadInputError, match="not found") as err:
        ADAPTER.load(SMALL, weights=tmp_path / "missing.pth")
    assert "\n" not in str(err.value)
    with pytest.raises(BadInputError, match="model file not found"):
        ADAPTER.load(tmp_path / "fasterrcnn_resnet50_fpn_coco.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(BadInputError, match="cannot read"):
        ADAPTER.load(SMALL, weights=junk)
    wrong = tmp_path / "wrong.pth"
    state = dict(model.state_dict())
    state["backbone.fpn.layer_blocks.0.0.weight"] = torch.zeros(3, 3, 3, 3)
    del state["rpn.head.conv.0.0.bias"]
    torch.save(state, wrong)
    with pytest.raises(BadInputError) as err:
        ADAPTER.load(SMALL, weights=wrong)
    message = str(err.value)
    assert "\n" not in message and "1 model tensors missing" in message and "shape mismatches" in message
    with pytest.raises(UnsupportedError):
        ADAPTER.load("fasterrcnn_unknown_fpn")


def test_weights_load_in_torchvision_pretrained_layout_and_reheads(tmp_path, model):
    weights = tmp_path / "w.pth"
    torch.save({"state_dict": model.state_dict()}, weights)
    same = ADAPTER.load(SMALL, weights=weights)
    assert ADAPTER.class_names(same) == ["class0", "class1", "class2"]  # a bare state dict has no names
    assert count_frozen(same.backbone.body) > 0 and count_frozen(same.backbone.fpn) == 0
    for key, value in model.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(same.state_dict()[key], value), key
    other = ADAPTER.load(SMALL, weights=weights, class_names=["car", "truck", "bus", "tram", "van"])
    assert other.roi_heads.box_predictor.cls_score.out_features == 6
    assert torch.equal(other.backbone.fpn.layer_blocks[0][0].weight, model.backbone.fpn.layer_blocks[0][0].weight)
    assert ADAPTER.class_names(other) == ["car", "truck", "bus", "tram", "van"]


def test_frozen_norms_become_batchnorm_and_back_exactly():
    torch.manual_seed(1)
    model = shrink_for_cpu(ckpt.build(SMALL, 4, pretrained_layout=True)).eval()
    randomize_norms(model)
    images = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        before = dense_outputs(model, images)
        assert unfreeze_batchnorm(model) > 0 and count_frozen(model) == 0
        unfrozen = dense_outputs(model, images, before.proposals)
        assert freeze_batchnorm(model) > 0 and not any(type(m) is nn.BatchNorm2d for m in model.modules())
        refrozen = dense_outputs(model, images, before.proposals)
    for a, b, c in zip(before.tensors(), unfrozen.tensors(), refrozen.tensors()):
        assert_same(b, a)
        assert_same(c, a)
    assert all(isinstance(m, FrozenBatchNorm2d) for m in model.modules() if "BatchNorm" in type(m).__name__)


def test_activation_points_cover_prunable_layers_with_one_channel_each(model):
    points = ADAPTER.activation_points(model)
    protected = {id(m) for m in ADAPTER.protected_layers(model)}
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert set(points) == {n for n, m in layers.items() if id(m) not in protected}
    widths = activation_widths(ADAPTER, model, torch.rand(1, 3, 64, 96))
    assert widths == {name: {out_width(layers[name])} for name in points}


def test_targets_shift_labels_and_drop_ignore_regions():
    batch = make_batch()
    targets = targets_of(batch, torch.device("cpu"))
    assert targets[0]["labels"].tolist() == [1, 2]
    assert targets[1]["labels"].tolist() == [3] and targets[1]["boxes"].shape == (1, 4)


def test_loss_and_utility_are_differentiable(model):
    batch = make_batch(images=1)
    point = ADAPTER.activation_points(model)["backbone.fpn.layer_blocks.0.0"]
    grads = []

    def keep_gradient(module, inputs, output):
        output.register_hook(lambda g: grads.append(g.abs().sum()))

    handle = point.register_forward_hook(keep_gradient)
    try:
        model.train()
        loss = ADAPTER.detection_loss(model, batch)
        model.eval()
        assert loss.dim() == 0 and torch.isfinite(loss)
        utility = ADAPTER.detection_utility(model, batch)
        assert utility.requires_grad and torch.isfinite(utility)
        assert not model.training and not model.transform.training
        utility.backward()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
    assert grads and float(grads[-1]) > 0
    # with no object box the utility is 0 but still a graph
    empty = make_batch(images=1)
    empty.ignore = [torch.ones_like(i) for i in empty.ignore]
    value = ADAPTER.detection_utility(model, empty)
    assert value.item() == 0.0 and value.requires_grad


def test_predict_maps_back_to_original_pixels(model):
    batch = make_batch()
    detections = ADAPTER.predict(model, batch, conf=0.0, iou=0.6, max_det=20)
    with torch.no_grad(), input_size_kept(model, (96, 160)), postprocess_settings(model, conf=0.0, iou=0.6, max_det=20):
        raw = model(list(batch.images))
    assert len(detections) == 2
    for det, out, lb, sample in zip(detections, raw, batch.letterboxes, batch.samples):
        assert 0 < len(det.boxes) <= 20
        expected = lb.to_original(out["boxes"].numpy())
        expected[:, 0::2] = expected[:, 0::2].clip(0, sample.width)
        expected[:, 1::2] = expected[:, 1::2].clip(0, sample.height)
        np.testing.assert_allclose(det.boxes, expected, rtol=1e-6)
        np.testing.assert_array_equal(det.labels, out["labels"].numpy() - 1)
        assert det.labels.min() >= 0 and det.labels.max() < len(CLASSES)
    assert model.transform.min_size == (320,)  # the transform's own settings are back


def test_example_inputs_round_up_to_stride(model):
    x = ADAPTER.example_inputs(model, (100, 150), batch_size=2)
    assert tuple(x.shape) == (2, 3, 128, 160) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert torch.equal(x, ADAPTER.example_inputs(model, (100, 150), batch_size=2))
