"""Criterion options from the command line: ``--criterion-option KEY=VALUE``."""

from __future__ import annotations

import json

import pytest

from detprune.cli import main
from detprune.criteria.base import build_criterion, parse_options
from detprune.errors import DetpruneError

from pruning_toys import one_thread  # noqa: F401


def test_options_parse_as_yaml_scalars_and_reach_the_criterion():
    options = parse_options(["max_channels_per_layer=2", "metric=loss", "layers=[model.0.conv]"])
    assert options == {"max_channels_per_layer": 2, "metric": "loss", "layers": ["model.0.conv"]}
    car = build_criterion("car", options, {"seed": 3, "progress": False})
    assert car.max_channels_per_layer == 2 and car.layers == ["model.0.conv"] and car.seed == 3


def test_an_option_the_criterion_does_not_take_is_a_one_line_error():
    with pytest.raises(DetpruneError, match="takes no option bogus"):
        build_criterion("l1", {"bogus": 1})
    with pytest.raises(DetpruneError, match="KEY=VALUE"):
        parse_options(["no-equals-sign"])


def test_prune_with_car_measuring_one_channel_per_layer(synthetic_kitti, tmp_path, capsys):
    out = tmp_path / "car"
    code = main(["prune", "--model", "yolov5n.yaml", "--random-init",
                 "--data", str(synthetic_kitti), "--criterion", "car",
                 "--criterion-option", "max_channels_per_layer=1",
                 "--max-images", "2", "--batch-size", "2", "--imgsz", "64", "--ratio", "0.2", "--no-eval",
                 "--device", "cpu", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    record = json.loads((out / "prune.json").read_text())
    assert record["criterion"] == "car" and record["achieved"]["ratio"] > 0
    assert main(["prune", "--model", "yolov5n.yaml", "--random-init",
                 "--criterion", "l1", "--criterion-option", "bogus=1",
                 "--ratio", "0.2", "--out", str(tmp_path / "bad")]) == 2
    assert "takes no option bogus" in capsys.readouterr().err
