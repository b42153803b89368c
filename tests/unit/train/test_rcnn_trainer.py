"""Fine-tuning a pruned Faster R-CNN keeps its widths and returns the best weights by validation mAP."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from detprune.adapters.rcnn import RcnnAdapter
from detprune.adapters.rcnn.checkpoint import layer_specs
from detprune.errors import BadInputError, DetpruneError
from detprune.adapters.rcnn.trainer import lr_factor
from rcnn_models import small_model

ADAPTER = RcnnAdapter()


def test_warmup_then_steps():
    schedule = dict(iters_per_epoch=10, warmup_iters=5, warmup_factor=0.001, milestones=[2, 3], gamma=0.1)
    assert lr_factor(0, **schedule) == pytest.approx(0.001)
    assert lr_factor(2, **schedule) == pytest.approx(0.001 * 0.6 + 0.4)
    assert [lr_factor(i, **schedule) for i in (5, 19)] == [1.0, 1.0]
    assert lr_factor(20, **schedule) == pytest.approx(0.1) and lr_factor(35, **schedule) == pytest.approx(0.01)


def test_finetune_keeps_structure_and_returns_best(tmp_path, synthetic_kitti):
    from detprune.data.kitti import read_kitti

    data = read_kitti(synthetic_kitti, progress=False)
    model = ADAPTER.prepare_for_pruning(small_model())
    fc6 = model.roi_heads.box_head.fc6
    model.roi_heads.box_head.fc6 = nn.Linear(fc6.in_features, 512)  # a "pruned" width the trainer must keep
    model.roi_heads.box_head.fc7 = nn.Linear(512, model.roi_heads.box_head.fc7.out_features)
    widths = {k: v for k, v in layer_specs(model).items() if v["type"] in ("Conv2d", "Linear")}
    out = tmp_path / "ft"
    trained = ADAPTER.finetune(
        model, (data[:8], data[8:10]), epochs=2, out_dir=out, imgsz=(96, 320), batch_size=2,
        lr=0.005, warmup_iters=2, max_iters_per_epoch=1, progress=False,
    )
    assert trained is model and not trained.training
    assert {k: v for k, v in layer_specs(trained).items() if v["type"] in ("Conv2d", "Linear")} == widths
    assert not any(type(m) is nn.BatchNorm2d for m in trained.modules())  # norms frozen for small batches
    log = json.loads((out / "train_log.json").read_text())
    assert [e["epoch"] for e in log["epochs"]] == [1, 2]
    values = [e["metrics"]["mAP50"] for e in log["epochs"]]
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in log["epochs"])
    best = ADAPTER.load_checkpoint(out / "best.pt")
    meta = torch.load(out / "best.pt", weights_only=True)["meta"]
    assert meta["mAP50"] == max(values) and meta["epoch"] == 1 + values.index(max(values))
    for key, value in best.state_dict().items():
        assert torch.equal(value, trained.state_dict()[key]), key
    assert (out / "last.pt").is_file()


def test_bad_finetune_inputs(tmp_path):
    model = small_model()
    with pytest.raises(BadInputError, match="DetectionSet"):
        ADAPTER.finetune(model, "not a dataset", epochs=1, out_dir=tmp_path)
    with pytest.raises(DetpruneError, match="unknown fine-tuning option"):
        ADAPTER.finetune(model, "x", epochs=1, out_dir=tmp_path, learning_rate=0.1)
