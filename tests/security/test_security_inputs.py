"""A yaml is data, every number is checked where it is read, random weights are asked for (issue #25).

Each bad input ends in exactly one ``detprune: error:`` line and exit 2; an architecture yaml
whose ``activation`` would run code never runs it (the marker file must not appear).
"""

from __future__ import annotations

import json

import pytest

import detprune
from detprune import cli
from detprune.errors import BadInputError

SMALL_ARCH = ("backbone:\n  - [-1, 1, Conv, [16, 3, 2]]\n  - [-1, 1, Conv, [32, 3, 2]]\n  - [-1, 1, Conv, [64, 3, 2]]\n"
              "head:\n  - [[2], 1, Detect, [nc]]\n")


def _error(capsys, argv) -> str:
    """Run the CLI; it must fail with one line and no traceback. Returns that line."""
    capsys.readouterr()
    assert cli.main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("detprune: error: ") and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("activation", [
    "__import__('os').system('touch {marker}')",
    "open('{marker}', 'w')",
    "nn.SiLU() if open('{marker}', 'w') else None",
    "nn.Module.__subclasses__() or open('{marker}', 'w')",
    "torch.nn.LeakyReLU(open('{marker}', 'w'))",
])
def test_an_activation_that_is_code_never_runs(tmp_path, capsys, activation):
    marker = tmp_path / "MARKER"
    arch = tmp_path / "my.yaml"
    arch.write_text(f"nc: 3\nactivation: \"{activation.format(marker=marker)}\"\n" + SMALL_ARCH)
    err = _error(capsys, ["prune", "--model", arch, "--random-init", "--target-flops", "0.8", "--imgsz", "64",
                          "--device", "cpu", "--out", tmp_path / "out"])
    assert "is not a torch.nn module call with literal arguments" in err and "may not hold code" in err
    with pytest.raises(BadInputError, match="may not hold code"):
        detprune.load(str(arch))
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_a_torch_nn_activation_with_literal_arguments_is_built(tmp_path):
    arch = tmp_path / "leaky.yaml"
    arch.write_text("nc: 3\nactivation: torch.nn.ReLU(inplace=True)\n" + SMALL_ARCH)  # as ultralytics' own yamls
    model = detprune.load(str(arch), prepare=False)
    assert any(type(m).__name__ == "ReLU" for m in model.modules())


@pytest.mark.parametrize("field, shown", [("nc: abc", "nc must be a whole number from 1 to 100000, got 'abc'"),
                                          ("nc: .inf", "nc must be a whole number from 1 to 100000, got inf"),
                                          ("nc: [1, 2]", "nc must be a whole number from 1 to 100000, got [1, 2]"),
                                          ("depth_multiple: -1", "depth_multiple must be a finite number above 0")])
def test_bad_numbers_of_an_architecture_yaml_are_one_line(tmp_path, capsys, field, shown):
    arch = tmp_path / "bad.yaml"
    arch.write_text(f"{field}\n" + SMALL_ARCH)
    err = _error(capsys, ["export", "--model", arch, "--imgsz", "64", "--out", tmp_path / "m.onnx"])
    assert err == f"detprune: error: {arch}: {shown}" or shown in err, err


def test_a_yolo_dataset_yaml_with_a_bad_nc_is_one_line(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    data = tmp_path / "data.yaml"
    data.write_text(f"path: {tmp_path}\ntrain: images\nval: images\nnc: abc\n")
    err = _error(capsys, ["data", "stats", data, "--split", "val"])
    assert err == f"detprune: error: {data}: nc must be a whole number from 1 to 100000, got 'abc'"


@pytest.mark.parametrize("field, shown", [
    ("val_fraction: abc", "val_fraction must be a finite number above 0 and at most 1, got 'abc'"),
    ("val_fraction: .nan", "val_fraction must be a finite number above 0 and at most 1, got nan"),
    ("seed: [1, 2]", "seed must be a whole number from 0 to 4.29497e+09, got [1, 2]"),
    ("val_count: 2.5", "val_count must be a whole number of at least 1, got 2.5"),
])
def test_bad_split_settings_of_a_dataset_yaml_are_one_line(synthetic_kitti, tmp_path, capsys, field, shown):
    data = tmp_path / "kitti.yaml"
    data.write_text(f"format: kitti\npath: {synthetic_kitti}\n{field}\n")
    err = _error(capsys, ["eval", "--model", "yolov8n.yaml", "--random-init", "--data", data, "--imgsz", "64",
                          "--device", "cpu"])
    assert err == f"detprune: error: {data}: {shown}"


def test_a_coco_image_of_infinite_width_is_one_line(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    path = tmp_path / "instances_val.json"
    text = json.dumps({
        "images": [{"id": 1, "file_name": "1.png", "width": "WIDTH", "height": 100}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 10, 10], "iscrowd": 0}],
        "categories": [{"id": 3, "name": "car"}],
    }).replace('"WIDTH"', "Infinity")  # what json.dumps(float("inf")) writes
    path.write_text(text)
    (tmp_path / "map.yaml").write_text("car: Car\n")
    err = _error(capsys, ["data", "stats", path, "--class-map", tmp_path / "map.yaml"])
    assert "image entry 1 lacks id/file_name or a positive whole width/height" in err


@pytest.mark.parametrize("command", [
    ["eval", "--model", "yolov8n.yaml", "--random-init", "--data", "DATA"],
    ["prune", "--model", "yolov8n.yaml", "--random-init", "--target-flops", "0.5"],
    ["score", "--model", "yolov8n.yaml", "--random-init", "--criterion", "l1"],
    ["export", "--model", "yolov8n.yaml"],
])
def test_an_image_size_beyond_the_bound_names_its_memory(synthetic_kitti, tmp_path, capsys, command):
    argv = [synthetic_kitti if a == "DATA" else a for a in command] + ["--imgsz", "100000"]
    if command[0] != "eval":
        argv += ["--out", tmp_path / ("m.onnx" if command[0] == "export" else "out")]
    err = _error(capsys, argv)
    assert err == ("detprune: error: --imgsz 100000 is above the limit of 8192: one 100000x100000 image alone "
                   "takes 111.8 GiB as float32, and the network's activations many times that")
    assert list(tmp_path.iterdir()) == []


def test_the_library_bounds_the_image_size_too():
    from detprune.data.batch import as_hw

    assert as_hw((384, 1280)) == (384, 1280)
    with pytest.raises(BadInputError, match="imgsz width 100000 is above the limit of 8192"):
        as_hw((384, 100000))


@pytest.mark.parametrize("command", ["prune", "score", "eval", "search"])
def test_a_yaml_without_weights_is_refused_unless_random_init(synthetic_kitti, tmp_path, capsys, command):
    argv = [command, "--model", "yolov8n.yaml", "--data", synthetic_kitti, "--imgsz", "64", "--device", "cpu"]
    if command in ("prune", "search"):
        argv += ["--target-flops", "0.5"]
    if command != "eval":
        argv += ["--out", tmp_path / "out"]
    err = _error(capsys, argv)
    assert err == ("detprune: error: yolov8n.yaml: no weights given, so this would be a randomly initialised detector "
                   "(nothing is downloaded); give a trained .pt as the model, or --weights FILE (a state dict), "
                   "or pass --random-init to start from random weights")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag, value", [("--target-flops", "nan"), ("--target-flops", "inf"), ("--lr", "-inf")])
def test_no_flag_takes_a_non_finite_number(tmp_path, capsys, flag, value):
    err = _error(capsys, ["prune", "--model", "yolov8n.yaml", "--random-init", "--imgsz", "64", f"{flag}={value}",
                          *([] if flag == "--target-flops" else ["--target-flops", "0.5"]), "--out", tmp_path / "o"])
    assert err == f"detprune: error: {flag} must be a finite number, got {float(value)}"
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("field, shown", [("target_flops: [1, 2]", "must be a finite number, got [1, 2]"),
                                          ("batch_size: true", "must be a whole number, got True"),
                                          ("imgsz: 100000", "above the limit of 8192")])
def test_a_recipe_number_of_the_wrong_type_is_one_line(tmp_path, capsys, field, shown):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model: yolov8n.yaml\nrandom_init: true\n{field}\n")
    err = _error(capsys, ["prune", "--config", recipe, "--target-flops", "0.5", "--out", tmp_path / "o"]
                 if "target_flops" not in field else ["prune", "--config", recipe, "--out", tmp_path / "o"])
    assert shown in err
    assert not (tmp_path / "o").exists()
