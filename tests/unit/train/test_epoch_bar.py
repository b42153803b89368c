"""The fine-tuning epoch bar: as many steps as epochs, and the loss where no epoch was validated."""

from __future__ import annotations

import re

from pruning_toys import one_thread  # noqa: F401


def test_the_bar_counts_the_epochs_and_shows_the_loss_without_validation(
    synthetic_kitti, tmp_path, monkeypatch, capsys
):
    from detprune.adapters import get_adapter
    from detprune.adapters.yolo.trainer import finetune_yolo
    from detprune.data.convert import write_yolo_dataset
    from detprune.data.loader import load_dataset

    monkeypatch.setenv("DETPRUNE_QUIET", "0")  # the bar is what is tested
    monkeypatch.delenv("CI", raising=False)
    data = load_dataset(synthetic_kitti)
    yaml_path = write_yolo_dataset(data[:4], data[4:6], tmp_path / "data")
    adapter = get_adapter("yolov8n.yaml")
    model = adapter.load("yolov8n.yaml", class_names=data.class_names)
    finetune_yolo(model, yaml_path, epochs=2, out_dir=tmp_path / "run", imgsz=64, batch=2, workers=0, val=False)
    err = capsys.readouterr().err
    renders = [r for r in err.split("\r") if r.startswith("fine-tune epochs:")]
    counts = {int(re.search(r"(\d+)/2", r).group(1)) for r in renders}
    assert counts and max(counts) == 2, err[-500:]  # never 3/2: the final validation is not an epoch
    first = [r for r in renders if " 1/2 " in r and "]" in r and "=" in r]
    # epoch 1 was not validated (val=False): its loss, not a validation mAP that was never computed
    assert first and all("loss=" in r and "mAP50" not in r for r in first), first
