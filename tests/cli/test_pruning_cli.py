"""``detprune prune`` end to end on YOLOv5n (data-free criteria: no dataset needed)."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import yaml

from detprune.adapters.yolo import YoloAdapter
from detprune.cli import main
from detprune.pruning import conv_channels

from pruning_toys import one_thread  # noqa: F401

BASE = ["prune", "--model", "yolov5n.yaml", "--random-init", "--imgsz", "128"]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("prune") / "run"
    assert main(BASE + ["--target-flops", "0.5", "--criterion", "random", "--seed", "3", "--out", str(out)]) == 0
    return out


def _removed(folder):
    return json.loads((folder / "prune.json").read_text())["removed"]


def test_a_run_writes_the_pruned_model_and_its_record(first_run, capsys):
    for name in (
        "pruned.pt",
        "prune.json",
        "channels.csv",
        "channels.json",
        "channels.png",
        "scores.pt",
        "config.yaml",
    ):
        assert (first_run / name).is_file(), name
    report = json.loads((first_run / "prune.json").read_text())
    assert abs(report["achieved"]["flops"] - 0.5) <= 0.01
    assert report["after"] == report["predicted"] and report["after"]["flops"] == 2 * report["after"]["macs"]
    # the checkpoint reloads with the widths the table reports
    model = YoloAdapter().load_checkpoint(first_run / "pruned.pt")
    with open(first_run / "channels.csv") as handle:
        rows = {row["layer"]: row for row in csv.DictReader(handle)}
    widths = conv_channels(model)
    assert widths == {name: int(row["after"]) for name, row in rows.items()}
    assert any(int(r["removed"]) > 0 for r in rows.values())
    assert sum(p.numel() for p in model.parameters()) == report["after"]["params"]
    scores = torch.load(first_run / "scores.pt", weights_only=True)
    assert set(scores) == set(YoloAdapter().activation_points(model))


def test_the_written_config_reproduces_the_run(first_run, tmp_path):
    config = yaml.safe_load((first_run / "config.yaml").read_text())
    assert config["target_flops"] == 0.5 and config["seed"] == 3 and config["criterion"] == "random"
    again = tmp_path / "again"
    assert (
        main(["prune", "--config", str(first_run / "config.yaml"), "--model", "yolov5n.yaml", "--out", str(again)]) == 0
    )
    assert _removed(again) == _removed(first_run)


def test_precomputed_scores_and_a_flag_that_overrides_the_recipe_target(first_run, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"target_flops": 0.5, "imgsz": 128, "model": "yolov5n.yaml"}))
    out = tmp_path / "by-ratio"
    assert main(["prune", "--config", str(recipe), "--model", "yolov5n.yaml", "--random-init", "--ratio", "0.3",
                 "--scores", str(first_run / "scores.pt"), "--per-layer", "--out", str(out)]) == 0
    report = json.loads((out / "prune.json").read_text())
    assert report["target"] == {"kind": "ratio", "value": 0.3} and abs(report["achieved"]["ratio"] - 0.3) <= 0.006
    assert report["criterion"] is None and report["settings"]["global_ranking"] is False


def test_existing_output_is_refused_unless_exist_ok(first_run, capsys):
    before = (first_run / "prune.json").read_text()
    assert main(BASE + ["--ratio", "0.2", "--out", str(first_run)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and err.count("\n") == 1
    assert (first_run / "prune.json").read_text() == before


def test_exist_ok_replaces_only_an_earlier_prune_folder(tmp_path, capsys):
    other = tmp_path / "someone-elses"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert main(BASE + ["--ratio", "0.2", "--out", str(other), "--exist-ok"]) == 2
    assert "not written by 'detprune prune'" in capsys.readouterr().err and (other / "notes.txt").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--ratio", "1.5"], "--ratio must lie in (0, 1)"),
        (["--target-flops", "0"], "--target-flops must lie in (0, 1)"),
        (["--target-params", "1"], "--target-params must lie in (0, 1)"),
        (["--ratio", "0.3", "--target-flops", "0.5"], "give one target"),
        ([], "give one target"),
        (["--ratio", "0.3", "--round-to", "0"], "--round-to"),
        (["--ratio", "0.3", "--max-ratio", "1.2"], "--max-ratio"),
        (["--ratio", "0.3", "--criterion", "taylor"], "give --data"),
        (["--ratio", "0.3", "--criterion", "nonsense"], "unknown criterion"),
        (["--target-flops", "0.01"], "cannot be reached"),
    ],
)
def test_bad_input_is_one_line(flags, message, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(BASE + flags + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_a_data_driven_criterion_scores_on_the_given_images(synthetic_kitti, tmp_path):
    out = tmp_path / "taylor"
    assert main(BASE + ["--ratio", "0.3", "--criterion", "taylor", "--data", str(synthetic_kitti), "--max-images", "4",
                        "--batch-size", "2", "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads((out / "prune.json").read_text())
    assert report["criterion"] == "taylor" and abs(report["achieved"]["ratio"] - 0.3) <= 0.006
    scores = torch.load(out / "scores.pt", weights_only=True)
    assert any(float(v.abs().sum()) > 0 for v in scores.values())
    model = YoloAdapter().load_checkpoint(out / "pruned.pt")
    assert len(YoloAdapter().class_names(model)) == 3  # re-headed for the dataset's KITTI classes
