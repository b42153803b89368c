"""The ultralytics YOLO adapter on tiny real models built from the architecture yamls."""

from __future__ import annotations

import copy
import functools
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from detprune.adapters import get_adapter
from detprune.adapters.yolo import YoloAdapter, load_state_dict_file
from detprune.adapters.yolo.rewrites import SPLIT_TYPES
from detprune.data.batch import Batch, Letterbox, letterbox
from detprune.data.types import Sample
from detprune.errors import BadInputError, UnsupportedError

ARCHS = ["yolov5nu", "yolov8n", "yolo11n", "yolo26n"]
CLASSES = ["car", "pedestrian", "cyclist"]
ADAPTER = YoloAdapter()


@functools.lru_cache(maxsize=None)
def _built(arch: str) -> nn.Module:
    """A model with non-trivial BatchNorm statistics, so eval outputs depend on every channel."""
    model = ADAPTER.load(arch, class_names=CLASSES)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
    return model.eval()


def build(arch: str) -> nn.Module:
    return copy.deepcopy(_built(arch))


def raw_outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        y, raw = model(x)
    branches = [raw[k] for k in ("one2many", "one2one")] if "one2many" in raw else [raw]
    return [y] + [t for b in branches for t in (b["boxes"], b["scores"], *b["feats"])]


def make_batch(images: torch.Tensor, boxes: list[list[list[float]]], labels: list[list[int]]) -> Batch:
    n = len(images)
    return Batch(
        images,
        [torch.tensor(b, dtype=torch.float32).reshape(-1, 4) for b in boxes],
        [torch.tensor(c, dtype=torch.int64) for c in labels],
        [torch.zeros(len(c), dtype=torch.bool) for c in labels],
        [Letterbox(1.0, 0.0, 0.0)] * n,
        [],
    )


# --- loading ------------------------------------------------------------------------------


def test_handles_names_yamls_and_checkpoints(tmp_path):
    for spec in ("yolov8n", "yolo11s.yaml", "yolov5nu", "yolo26n", "yolov8n.yml", "missing_yolo.pt"):
        assert YoloAdapter.handles(spec), spec
    plain = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, plain)
    for spec in ("fasterrcnn_resnet50_fpn", "resnet50", str(plain), "model.onnx"):
        assert not YoloAdapter.handles(spec), spec
    assert isinstance(get_adapter("yolov8n.yaml"), YoloAdapter)


def test_load_sets_classes_and_hyperparameters():
    model = build("yolov8n")
    assert ADAPTER.class_names(model) == CLASSES
    assert model.model[-1].nc == 3
    assert model.args.box > 0 and model.args.cls > 0  # the loss gains ultralytics trains with
    assert ADAPTER.default_imgsz() == 640


@pytest.mark.parametrize(
    "spec, error, words",
    [
        ("missing_yolov8n.pt", BadInputError, "not found"),
        ("yolo99n", BadInputError, "yolo99n"),
        ("yolov8n-seg.yaml", UnsupportedError, "Segment"),
        ("yolov8n-ghost.yaml", UnsupportedError, "GhostConv"),
        ("yolo12n", UnsupportedError, "A2C2f"),
    ],
)
def test_bad_specs_give_one_line_errors(tmp_path, spec, error, words):
    spec = str(tmp_path / spec) if spec.endswith(".pt") else spec
    with pytest.raises(error) as info:
        ADAPTER.load(spec)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_corrupt_checkpoint_is_one_line_bad_input(tmp_path):
    for name, data in (("yolo_corrupt.pt", np.random.default_rng(0).bytes(4096)), ("yolo_empty.pt", b"")):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(BadInputError) as info:
            ADAPTER.load(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(BadInputError):
        ADAPTER.load("yolov8n", weights=tmp_path / "yolo_corrupt.pt")


def test_checkpoint_of_another_task_is_unsupported(tmp_path):
    from ultralytics.nn.tasks import SegmentationModel

    path = tmp_path / "yolov8n-seg.pt"
    torch.save({"model": SegmentationModel("yolov8n-seg.yaml", nc=2, verbose=False), "train_args": {}}, path)
    assert YoloAdapter.handles(path)
    with pytest.raises(UnsupportedError, match="Segment"):
        ADAPTER.load(path)


def test_shared_yolov5n_backbone_loads_every_tensor(yolov5n_backbone):
    model = ADAPTER.load("yolov5n.yaml")
    report = load_state_dict_file(model, yolov5n_backbone)
    own = model.state_dict()
    backbone = [k for k in own if not k.startswith("model.24.")]
    counters = [k for k in backbone if k.endswith("num_batches_tracked")]
    assert len(backbone) == 342
    assert sorted(report.matched) == sorted(set(backbone) - set(counters))
    assert not report.shape_mismatch and not report.unexpected
    assert all(k.startswith("model.24.") for k in report.missing)
    stored = torch.load(yolov5n_backbone, weights_only=True)["state_dict"]
    assert all(torch.equal(own[k], stored[k]) for k in report.matched)


# --- pruning preparation --------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_rewrites_are_exact_and_idempotent(arch):
    model = build(arch)
    x = ADAPTER.example_inputs(model, 96)
    before = raw_outputs(model, x)
    original_cv1 = {n: m.cv1.bn for n, m in model.named_modules() if hasattr(m, "cv1") and hasattr(m, "m")}

    ADAPTER.prepare_for_pruning(model)
    after = raw_outputs(model, x)
    assert len(before) == len(after)
    for a, b in zip(before, after):
        assert torch.allclose(a, b, atol=1e-5, rtol=0), (a - b).abs().max()

    split = {n: m for n, m in model.named_modules() if isinstance(m, SPLIT_TYPES)}
    assert bool(split) == (arch != "yolov5nu")  # C3 of YOLOv5u has no chunk to split
    for name, block in split.items():
        assert not hasattr(block, "cv1")
        old_bn = original_cv1[name]
        assert block.cv1_a.bn.eps == old_bn.eps and block.cv1_b.bn.momentum == old_bn.momentum
        assert block.cv1_a.conv.out_channels + block.cv1_b.conv.out_channels == old_bn.num_features

    keys = list(model.state_dict())
    ADAPTER.prepare_for_pruning(model)
    assert list(model.state_dict()) == keys
    for a, b in zip(before, raw_outputs(model, x)):
        assert torch.allclose(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["yolov8n", "yolo26n"])
def test_protected_layers_and_activation_points(arch):
    model = ADAPTER.prepare_for_pruning(build(arch))
    head = model.model[-1]
    protected = {id(m) for m in ADAPTER.protected_layers(model)}
    branches = ["cv2", "cv3"] + (["one2one_cv2", "one2one_cv3"] if arch == "yolo26n" else [])
    for name in branches:
        for branch in getattr(head, name):
            assert id(branch[-1]) in protected
    if arch == "yolov8n":
        assert id(head.dfl) in protected
    else:
        attention = [m for m in model.modules() if type(m).__name__ == "Attention"]
        assert attention and all(id(a.qkv) in protected and id(a.proj) in protected for a in attention)

    points = ADAPTER.activation_points(model)
    covered = {id(m) for layer in ADAPTER.protected_layers(model) for m in layer.modules()}
    assert points and not any(id(model.get_submodule(name)) in covered for name in points)
    outputs = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: outputs.setdefault(n, o)) for n, m in points.items()]
    raw_outputs(model, ADAPTER.example_inputs(model, 64))
    for h in hooks:
        h.remove()
    for name, act in outputs.items():
        assert act.shape[1] == model.get_submodule(name).out_channels
    assert set(outputs) == set(points)


def test_example_inputs_round_up_to_stride():
    model = build("yolov8n")
    x = ADAPTER.example_inputs(model, (100, 70), batch_size=2)
    assert x.shape == (2, 3, 128, 96) and 0 <= x.min() and x.max() <= 1


def test_prepared_model_prunes_with_torch_pruning():
    tp = pytest.importorskip("torch_pruning")
    model = ADAPTER.prepare_for_pruning(build("yolo11n"))
    x = ADAPTER.example_inputs(model, 64)
    params = sum(p.numel() for p in model.parameters())
    pruner = tp.pruner.MagnitudePruner(
        model, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.5,
        ignored_layers=ADAPTER.protected_layers(model),
    )
    pruner.step()
    assert sum(p.numel() for p in model.parameters()) < 0.6 * params
    y = ADAPTER.export_module(model)(ADAPTER.example_inputs(model, 96))
    assert y.shape[1] == 4 + len(CLASSES)


# --- objective --------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_loss_is_finite_and_backpropagates(arch):
    model = build(arch).train()
    x = ADAPTER.example_inputs(model, 64, batch_size=2)
    batch = make_batch(x, [[[4, 6, 30, 40], [30, 30, 60, 50]], [[10, 10, 20, 20]]], [[0, 2], [1]])
    batch.ignore[0][1] = True  # an ignore region must not count as a target
    loss = ADAPTER.detection_loss(model, batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    first = model.model[0].conv.weight.grad
    assert first is not None and first.abs().sum() > 0


def test_ignored_boxes_do_not_change_the_loss():
    model = build("yolov8n")
    x = ADAPTER.example_inputs(model, 64)
    plain = make_batch(x, [[[4, 6, 30, 40]]], [[0]])
    extra = make_batch(x, [[[4, 6, 30, 40], [35, 35, 60, 60], [1, 1, 9, 9]]], [[0, 1, -1]])
    extra.ignore[0][1] = True
    assert torch.allclose(ADAPTER.detection_loss(model, plain), ADAPTER.detection_loss(model, extra))


def _confident_and_unlikely_boxes(model, x, k=4, half=8):
    """Equal-sized GT boxes around the model's k most and k least confident anchor points.

    Each box takes the class the model rates highest at its anchor; equal sizes make the
    assigner consider the same number of candidate anchors for both sets.
    """
    from ultralytics.utils.tal import make_anchors

    with torch.no_grad():
        y, raw = model(x)
    raw = raw.get("one2many", raw)
    scores, classes = y[0, 4:].max(0) if y.shape[1] == 4 + len(CLASSES) else raw["scores"][0].sigmoid().max(0)
    points, strides = make_anchors(raw["feats"], model.model[-1].stride, 0.5)
    centres = points * strides
    order = scores.argsort(descending=True)

    def boxes(idx):
        return torch.cat((centres[idx] - half, centres[idx] + half), 1).clamp(0, x.shape[-1]).tolist(), classes[
            idx
        ].tolist()

    return boxes(order[:k]), boxes(order[-k:])


@pytest.mark.parametrize("arch", ["yolov8n", "yolo26n"])
def test_utility_is_positive_differentiable_and_tracks_confidence(arch):
    model = build(arch)
    x = ADAPTER.example_inputs(model, 96)
    (good_boxes, good_cls), (bad_boxes, bad_cls) = _confident_and_unlikely_boxes(model, x)
    good = make_batch(x, [good_boxes], [good_cls])
    bad = make_batch(x, [bad_boxes], [bad_cls])

    name, point = next(iter(ADAPTER.activation_points(model).items()))
    kept = {}

    def keep(module, inputs, output):
        output.retain_grad()
        kept["a"] = output

    hook = point.register_forward_hook(keep)
    utility = ADAPTER.detection_utility(model, good)
    hook.remove()
    assert utility.ndim == 0 and utility > 0 and not model.training
    utility.backward()
    assert kept["a"].grad is not None and kept["a"].grad.abs().sum() > 0, name

    with torch.no_grad():
        assert ADAPTER.detection_utility(model, good) > ADAPTER.detection_utility(model, bad)
    empty = make_batch(x, [[]], [[]])
    assert ADAPTER.detection_utility(model, empty) == 0


def test_loss_utility_is_minus_the_loss_in_eval_mode():
    model = build("yolo11n")
    x = ADAPTER.example_inputs(model, 64)
    batch = make_batch(x, [[[4, 6, 30, 40]]], [[2]])
    value = ADAPTER.detection_utility(model, batch, utility="loss")
    assert torch.allclose(value, -ADAPTER.detection_loss(model.eval(), batch))


# --- predictions, files ---------------------------------------------------------------------


def _letterboxed_batch(tmp_path, imgsz=96):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (60, 150, 3), dtype=np.uint8)  # wide: padded top and bottom
    canvas, lb = letterbox(image, imgsz)
    sample = Sample(tmp_path / "frame.png", width=150, height=60)
    tensor = torch.from_numpy(canvas.transpose(2, 0, 1).copy()).float()[None] / 255
    return Batch(
        tensor,
        [torch.zeros(0, 4)],
        [torch.zeros(0, dtype=torch.int64)],
        [torch.zeros(0, dtype=torch.bool)],
        [lb],
        [sample],
    )


@pytest.mark.parametrize("arch", ["yolov8n", "yolo26n"])
def test_predict_maps_boxes_to_original_pixels(tmp_path, arch):
    from ultralytics.utils.nms import non_max_suppression

    model = build(arch)
    batch = _letterboxed_batch(tmp_path)
    (det,) = ADAPTER.predict(model, batch, conf=0.001, iou=0.6, max_det=50)
    assert 0 < len(det.boxes) <= 50 and det.labels.max() < len(CLASSES)
    with torch.no_grad():
        (raw,) = non_max_suppression(model(batch.images), 0.001, 0.6, max_det=50, nc=len(CLASSES))
    lb = batch.letterboxes[0]
    inside = (
        (raw[:, 0] >= lb.pad_x) & (raw[:, 2] <= 96 - lb.pad_x) & (raw[:, 1] >= lb.pad_y) & (raw[:, 3] <= 96 - lb.pad_y)
    )
    expected = lb.to_original(raw[inside, :4].numpy())
    got = det.boxes[inside.numpy()]
    assert np.allclose(got, expected, atol=1e-3)  # boxes within the picture: the exact inverse letterbox
    assert det.boxes[:, [0, 2]].max() <= 150 and det.boxes[:, [1, 3]].max() <= 60 and det.boxes.min() >= 0


def test_end_to_end_head_needs_no_nms(tmp_path):
    model = build("yolo26n")
    model.end2end = True
    (det,) = ADAPTER.predict(model, _letterboxed_batch(tmp_path), conf=0.0, iou=0.6, max_det=7)
    assert len(det.boxes) == 7 and np.all(np.diff(det.scores) <= 1e-6)  # top-k, sorted, no suppression


def test_export_module_returns_one_tensor_and_leaves_model_alone():
    model = build("yolo26n")
    exported = ADAPTER.export_module(model)
    y = exported(ADAPTER.example_inputs(model, 64))
    assert isinstance(y, torch.Tensor) and y.shape[:2] == (1, 4 + len(CLASSES))
    assert not model.model[-1].export


def test_save_reload_and_ultralytics_loads_pruned_checkpoint(tmp_path):
    tp = pytest.importorskip("torch_pruning")
    model = ADAPTER.prepare_for_pruning(build("yolo26n"))
    x = ADAPTER.example_inputs(model, 64)
    tp.pruner.MagnitudePruner(
        model, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.4,
        ignored_layers=ADAPTER.protected_layers(model),
    ).step()
    path = ADAPTER.save(model, tmp_path / "pruned.pt", {"criterion": "magnitude"})
    assert YoloAdapter.handles(path) and not list(tmp_path.glob(".pruned.pt*"))

    reloaded = ADAPTER.load_checkpoint(path)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in reloaded.state_dict().items()} == shapes
    assert ADAPTER.class_names(reloaded) == CLASSES
    with torch.no_grad():
        assert torch.allclose(model.eval()(x)[0], reloaded.eval()(x)[0], atol=1e-5)
    assert torch.load(path, weights_only=False)["detprune"] == {"criterion": "magnitude"}
    reheaded = ADAPTER.load(path, class_names=["car", "truck"])  # a pruned model takes new classes too
    assert ADAPTER.class_names(reheaded) == ["car", "truck"]
    assert reheaded.eval()(x)[0].shape[1] == 4 + 2

    script = (
        "import numpy as np, sys\n"
        "from ultralytics import YOLO\n"
        "model = YOLO(sys.argv[1])\n"
        "r = model.predict(np.zeros((70, 120, 3), np.uint8), imgsz=64, conf=0.0, verbose=False)\n"
        "print(len(r[0].boxes), sorted(model.names.values()))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, cwd=tmp_path, timeout=120,
        env={"YOLO_OFFLINE": "1", "YOLO_VERBOSE": "False", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    count, names = done.stdout.strip().split(" ", 1)
    assert int(count) > 0 and names == str(sorted(CLASSES))


