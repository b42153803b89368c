"""A pruned YOLOv5n, a handful of images with coloured boxes, one-epoch CPU settings, and weight
comparisons, for the fine-tuning tests."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import yaml

from detprune.train.structure import conv_widths

CLASSES = ["car", "pedestrian", "cyclist"]  # the kitti3 classes, so a KITTI folder fits the same model
COLOURS = [(40, 40, 220), (40, 220, 40), (220, 40, 40)]
FAST = {"imgsz": 64, "batch": 2, "workers": 0, "device": "cpu", "plots": False}


def write_dataset(root: Path, n_train: int = 4, n_val: int = 2, size: int = 96) -> Path:
    """images/{train,val}/*.png with filled boxes, YOLO labels beside them, and data.yaml."""
    rng = np.random.default_rng(0)
    for split, count in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for index in range(count):
            image = np.full((size, size, 3), 100, np.uint8)
            lines = []
            for k in range(3):
                w, h = (int(v) for v in rng.integers(12, 40, 2))
                x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
                cv2.rectangle(image, (x, y), (x + w, y + h), COLOURS[k], -1)
                lines.append(f"{k} {(x + w / 2) / size:.5f} {(y + h / 2) / size:.5f} {w / size:.5f} {h / size:.5f}")
            cv2.imwrite(str(root / "images" / split / f"{index}.png"), image)
            (root / "labels" / split / f"{index}.txt").write_text("\n".join(lines) + "\n")
    data = {"path": str(root), "train": "images/train", "val": "images/val", "names": CLASSES}
    (root / "data.yaml").write_text(yaml.safe_dump(data))
    return root / "data.yaml"


def pruned_yolov5n():
    """(YOLOv5n for 3 classes with half its channels removed, conv widths of the unpruned one)."""
    import torch_pruning as tp
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel("yolov5n.yaml", nc=len(CLASSES), verbose=False)
    unpruned = conv_widths(model)
    head = model.model[-1]
    predictors = [branch[-1] for branch in (*head.cv2, *head.cv3)] + [head.dfl]
    pruner = tp.pruner.MagnitudePruner(
        model, torch.rand(1, 3, 64, 64), importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=0.5, ignored_layers=predictors,
    )
    pruner.step()
    model.names = dict(enumerate(CLASSES))
    return model, unpruned


def largest_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel())


def last_weights(result) -> dict:
    return torch.load(result.last, map_location="cpu", weights_only=False)["model"].state_dict()
