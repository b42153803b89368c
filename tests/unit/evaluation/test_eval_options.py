"""Evaluation options against ultralytics' validator: the rect letterbox's resize and the multi-label NMS."""

from __future__ import annotations

import argparse

import cv2
import numpy as np
import pytest
import torch
from ultralytics.utils.ops import scale_boxes

from detprune.adapters.yolo import objective as yolo_objective
from detprune.adapters.yolo import YoloAdapter
from detprune.commands.eval import add_eval_arguments, eval_options
from detprune.data.batch import Batch, Letterbox, collate
from detprune.data.types import Sample

# --- rect letterbox: the val loader's resize ----------------------------------------------------


@pytest.mark.parametrize("width, height", [(1242, 375), (1224, 370)])
def test_rect_resize_is_the_val_loaders(tmp_path, width, height):
    # ultralytics' load_image (val, rect): r = 640 / max(h, w) = 640 / w; each side ceil(side * r),
    # at most 640. Width: ceil(w * 640 / w) = 640. Height: 375 * 640 / 1242 = 193.24 and
    # 370 * 640 / 1224 = 193.46, so 194 for both (rounding gave 193). The rect canvas is 224 x 672
    # (see test_data_sources), so the pads are left round((672 - 640) / 2 - 0.1) = 16 and top
    # round((224 - 194) / 2 - 0.1) = 15; the gains per axis 640 / w and 194 / h.
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path = tmp_path / "frame.png"
    cv2.imwrite(str(path), image[..., ::-1])  # stored BGR, read back RGB
    box = np.array([[100.0, 50.0, 300.0, 200.0]], np.float32)
    batch = collate([Sample(path, width, height, box, [0])], 640, rect=True)
    lb = batch.letterboxes[0]
    assert (lb.pad_x, lb.pad_y) == (16.0, 15.0)
    assert lb.scale == 640 / width and lb.scale_y == 194 / height

    # the pixels are cv2's bilinear resize to 640 x 194, as the loader's, on grey
    canvas = (batch.images[0] * 255).round().byte().permute(1, 2, 0).numpy()
    expected = cv2.resize(image, (640, 194), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(canvas[15 : 15 + 194, 16 : 16 + 640], expected)
    assert (canvas[:15] == 114).all() and (canvas[15 + 194 :] == 114).all()

    # a box in input pixels maps back as ultralytics' scale_boxes does with the loader's ratio_pad
    # ((gain_h, gain_w), (pad_w, pad_h)), and the ground truth goes in by the same gains
    on_input = lb.to_input(box)
    ours = lb.to_original(on_input)
    theirs = scale_boxes((224, 672), torch.from_numpy(on_input.copy()), (height, width),
                         ratio_pad=((194 / height, 640 / width), (16, 15))).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-3)
    np.testing.assert_allclose(ours, box, rtol=0, atol=1e-3)
    np.testing.assert_allclose(batch.boxes[0].numpy(), on_input)


def test_square_letterbox_keeps_one_gain(tmp_path):
    # square at 640: scale min(640 / 1242, 640 / 375) = 640 / 1242 for both axes
    path = tmp_path / "frame.png"
    cv2.imwrite(str(path), np.full((375, 1242, 3), 90, np.uint8))
    lb = collate([Sample(path, 1242, 375, [[0, 0, 10, 10]], [0])], 640).letterboxes[0]
    assert lb.scale == 640 / 1242 and lb.scale_y is None
    np.testing.assert_allclose(lb.gains, [640 / 1242] * 4, rtol=1e-6)


# --- multi-label NMS --------------------------------------------------------------------------


def _one_box_batch() -> Batch:
    image = torch.zeros(1, 3, 64, 64)
    return Batch(image, [torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.int64)], [torch.zeros(0, dtype=torch.bool)],
                 [Letterbox(1.0, 0.0, 0.0)], [])


def test_multi_label_gives_a_detection_per_class_above_conf():
    # One anchor, xywh (32, 32, 20, 20), class scores 0.6, 0.5, 0.1 at conf 0.25: classes 0 and 1
    # pass. Multi-label keeps both (NMS runs per class, so they do not suppress each other);
    # single-label keeps the box once, with its best class 0.
    raw = torch.tensor([32.0, 32.0, 20.0, 20.0, 0.6, 0.5, 0.1]).reshape(1, 7, 1)
    kw = dict(nc=3, end2end=False, conf=0.25, iou=0.7, max_det=300)
    (multi,) = yolo_objective.postprocess(raw, _one_box_batch(), multi_label=True, **kw)
    (single,) = yolo_objective.postprocess(raw, _one_box_batch(), **kw)
    assert sorted(multi.labels.tolist()) == [0, 1]
    np.testing.assert_allclose(np.sort(multi.scores), [0.5, 0.6], rtol=1e-6)
    np.testing.assert_allclose(multi.boxes, [[22, 22, 42, 42]] * 2, atol=1e-4)
    assert single.labels.tolist() == [0] and single.scores.tolist() == pytest.approx([0.6])


def test_multi_label_through_the_adapter():
    # yolov8n at 64 px has 8*8 + 4*4 + 2*2 = 84 anchors, and 3 classes. At conf 0 every sigmoid
    # score passes, and NMS IoU 1.0 suppresses nothing (it drops IoU > 1.0 only): single-label
    # keeps one detection an anchor (84), multi-label one an anchor and class (252).
    adapter = YoloAdapter()
    model = adapter.load("yolov8n", class_names=["car", "pedestrian", "cyclist"]).eval()
    batch = _one_box_batch()
    batch.images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    (single,) = adapter.predict(model, batch, conf=0.0, iou=1.0, max_det=1000)
    (multi,) = adapter.predict(model, batch, conf=0.0, iou=1.0, max_det=1000, multi_label=True)
    assert len(single.labels) == 84 and len(multi.labels) == 252
    assert np.bincount(multi.labels, minlength=3).tolist() == [84, 84, 84]


def test_multi_label_flag():
    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    assert eval_options(parser.parse_args(["--multi-label"]))["multi_label"] is True
    assert "multi_label" not in eval_options(parser.parse_args([]))  # default runs record what they did before
    (flag,) = [a for a in parser._actions if a.dest == "multi_label"]
    assert "ultralytics' val" in flag.help and flag.default is False
