"""The prune run in the library: one PruneConfig, one run(), one set of defaults for CLI and API."""

from __future__ import annotations

import json

import pytest
import yaml

import detprune
from detprune.cli import main
from detprune.defaults import DATA_CRITERION, DATA_FREE_CRITERION
from detprune.errors import BadInputError
from detprune.pruning.allocation import default_allocation
from detprune.workflow.config import PruneConfig

from pruning_toys import one_thread  # noqa: F401

IMGSZ = (64, 160)  # height, width: a wide driving frame's shape, not a square


def _cli(data, out, *flags):
    return main(
        [
            "prune",
            "--model",
            "yolov5n.yaml",
            "--random-init",
            "--data",
            str(data),
            "--imgsz",
            f"{IMGSZ[0]},{IMGSZ[1]}",
            "--target-flops",
            "0.6",
            "--max-images",
            "4",
            "--batch-size",
            "2",
            "--no-eval",
            "--device",
            "cpu",
            "--out",
            str(out),
            *flags,
        ]
    )


@pytest.fixture(scope="module")
def cli_run(synthetic_kitti, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "cli"
    assert _cli(synthetic_kitti, out) == 0
    return out


def test_with_data_the_default_is_the_best_measured_data_driven_cut(cli_run):
    record = json.loads((cli_run / "prune.json").read_text())
    assert record["criterion"] == DATA_CRITERION
    assert record["allocation"]["allocation"] == default_allocation(DATA_CRITERION)
    config = yaml.safe_load((cli_run / "config.yaml").read_text())  # written resolved: a rerun repeats it
    assert config["criterion"] == DATA_CRITERION and config["allocation"] == default_allocation(DATA_CRITERION)


def test_the_flops_are_those_of_the_shape_given(cli_run):
    record = json.loads((cli_run / "prune.json").read_text())
    assert record["imgsz"] == list(IMGSZ) and record["input_shape"] == "64x160"
    from detprune.adapters import get_adapter
    from detprune.workflow.measure import model_cost

    adapter = get_adapter("yolov5n.yaml")
    model = adapter.prepare_for_pruning(adapter.load("yolov5n.yaml", class_names=["Car", "Pedestrian", "Cyclist"]))
    assert record["before"]["flops"] == model_cost(adapter, model, IMGSZ).flops
    assert record["before"]["flops"] < model_cost(adapter, model, max(IMGSZ)).flops


def test_the_cli_and_detprune_prune_keep_the_same_channels(cli_run, synthetic_kitti):
    from detprune.data.loader import load_dataset
    from detprune.workflow.stages import seeded_subset

    data = load_dataset(synthetic_kitti)
    model = detprune.load("yolov5n.yaml", class_names=data.class_names)
    scores = detprune.score(model, seeded_subset(data, 4, 0), imgsz=IMGSZ, batch_size=2)
    assert scores.criterion == DATA_CRITERION
    result = detprune.prune(model, scores, target_flops=0.6, imgsz=IMGSZ)
    cli = json.loads((cli_run / "prune.json").read_text())
    assert result.as_dict()["removed"] == cli["removed"]
    assert result.settings["allocation"] == cli["allocation"]["allocation"]


def test_detprune_run_is_the_cli_run(cli_run, synthetic_kitti, tmp_path):
    config = PruneConfig(
        model="yolov5n.yaml",
        data=str(synthetic_kitti),
        imgsz=IMGSZ,
        target_flops=0.6,
        max_images=4,
        batch_size=2,
        no_eval=True,
        device="cpu",
        random_init=True,
        out=str(tmp_path / "api"),
    )
    state = detprune.run(config)
    assert (
        json.loads((state.out / "prune.json").read_text())["removed"]
        == json.loads((cli_run / "prune.json").read_text())["removed"]
    )
    # the written config is a recipe that runs again to the same channels
    again = detprune.run(str(state.out / "config.yaml"), out=str(tmp_path / "again"))
    assert again.result.as_dict()["removed"] == state.result.as_dict()["removed"]


def test_a_data_free_cut_says_it_is_known_to_collapse_and_offers_data(tmp_path, capsys):
    out = tmp_path / "free"
    assert (
        main(
            [
                "prune",
                "--model",
                "yolov5n.yaml",
                "--random-init",
                "--imgsz",
                "64",
                "--target-flops",
                "0.5",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    lines = [line for line in printed.splitlines() if "known to collapse" in line]
    assert len(lines) == 1 and "--data" in lines[0] and DATA_CRITERION in lines[0]
    assert json.loads((out / "prune.json").read_text())["criterion"] == DATA_FREE_CRITERION


def test_a_config_is_checked_once_with_one_line(tmp_path):
    with pytest.raises(BadInputError, match="give one target"):
        PruneConfig(model="yolov5n.yaml").validate()
    with pytest.raises(BadInputError, match="unknown field"):
        PruneConfig.from_mapping({"model": "yolov5n.yaml", "target_flop": 0.5})
    with pytest.raises(BadInputError, match="--val-data"):
        PruneConfig(model="m", target_flops=0.5, val_data="v").validate()
    assert PruneConfig.from_mapping({"imgsz": "224,640"}).imgsz == (224, 640)


def test_every_flag_of_prune_is_a_config_field_with_the_configs_default():
    import argparse

    from detprune.commands.prune_options import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    dests = {a.dest: a.default for a in parser._actions if a.dest not in ("help", "config")}
    assert set(dests) == set(PruneConfig.names())
    defaults = PruneConfig()
    assert {d: getattr(defaults, d) for d in dests} == dests
