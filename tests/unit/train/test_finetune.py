"""Fine-tuning a pruned YOLO model with the ultralytics trainer keeps the pruned structure.

The model is a real YOLOv5n pruned to half its channels with Torch-Pruning; the dataset is a
handful of 96 px images with coloured boxes. Every run is one CPU epoch at 64 px.
"""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from detprune.cli import main
from detprune.errors import BadInputError, DetpruneError
from detprune.adapters.yolo.trainer import finetune_yolo
from detprune.train.structure import conv_widths, parameter_count, tensor_shapes
from finetune_toys import CLASSES, FAST, pruned_yolov5n, write_dataset


def files_under(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


class NetworkRecorder:
    """Records (and refuses) every DNS lookup and connection attempted while installed."""

    def __init__(self):
        self.attempts: list[str] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def refuse(what):
            def blocked(*args, **kwargs):
                self.attempts.append(f"{what}{args[:2]}")
                raise OSError("network access during fine-tuning")

            return blocked

        real_connect = socket.socket.connect
        blocked_connect = refuse("connect")

        def connect(sock, address):  # local (AF_UNIX) sockets carry dataloader workers' tensors: allowed
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                return blocked_connect(sock, address)
            return real_connect(sock, address)

        monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
        monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
        monkeypatch.setattr(socket.socket, "connect", connect)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("boxes") / "boxes")


@pytest.fixture(scope="module")
def pruned():
    return pruned_yolov5n()


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, dataset, pruned):
    """One epoch of fine-tuning, with the network refused and the input files watched."""
    model, _ = pruned
    before_model = {k: v.clone() for k, v in model.state_dict().items()}
    before_data = files_under(dataset.parent)
    out = tmp_path_factory.mktemp("finetune") / "run"
    recorder = NetworkRecorder()
    with pytest.MonkeyPatch.context() as monkeypatch:
        recorder.install(monkeypatch)
        result = finetune_yolo(model, dataset, epochs=1, out_dir=out, **FAST)
    return {
        "result": result, "out": out, "network": recorder.attempts,
        "model_unchanged": all(torch.equal(before_model[k], v) for k, v in model.state_dict().items()),
        "data_unchanged": before_data == files_under(dataset.parent),
    }


def test_finetuned_model_keeps_the_pruned_architecture(finetuned, pruned):
    model, unpruned = pruned
    trained = finetuned["result"].model
    assert conv_widths(trained) == conv_widths(model)
    assert parameter_count(trained) == parameter_count(model)
    assert tensor_shapes(trained) == tensor_shapes(model)
    assert conv_widths(trained) != unpruned  # not silently restored to the yaml's widths
    narrower = [name for name, width in conv_widths(trained).items() if width < unpruned[name]]
    assert len(narrower) > 20, "the fixture should really be pruned"


def test_training_changed_the_weights_and_not_the_callers_model(finetuned, pruned):
    model, _ = pruned
    assert finetuned["model_unchanged"]
    trained = finetuned["result"].model.state_dict()
    changed = [
        k
        for k, v in model.state_dict().items()
        if v.is_floating_point() and not torch.allclose(v, trained[k].to(v.dtype))
    ]
    assert changed, "one epoch of training should move some weights"
    model_out = finetuned["result"].model
    assert all(p.requires_grad for n, p in model_out.named_parameters() if ".dfl." not in n)  # ready for scoring


def test_best_checkpoint_is_fp32_and_reloads_with_pruned_shapes(finetuned, pruned):
    from ultralytics import YOLO

    model, _ = pruned
    result = finetuned["result"]
    assert result.best == finetuned["out"] / "train" / "weights" / "best.pt"
    for path in (result.best, result.last):
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        assert ckpt["optimizer"] is None and ckpt["ema"] is None  # finalized like ultralytics' strip_optimizer
        saved = ckpt["model"]
        assert {p.dtype for p in saved.parameters()} == {torch.float32}
        assert tensor_shapes(saved) == tensor_shapes(model)
    reloaded = YOLO(str(result.best))
    assert conv_widths(reloaded.model) == conv_widths(model)
    assert next(reloaded.model.parameters()).dtype == torch.float32
    detections = reloaded.predict(np.zeros((64, 64, 3), np.uint8), imgsz=64, verbose=False)
    assert len(detections) == 1


def test_run_stays_in_out_dir_offline_and_leaves_inputs_alone(finetuned):
    result, out = finetuned["result"], finetuned["out"]
    assert finetuned["network"] == []
    assert finetuned["data_unchanged"]  # no labels/*.cache written into the dataset
    assert result.run_dir == out / "train"
    for name in ("start.pt", "train_data.yaml", "finetune.json", "train/args.yaml", "train/results.csv"):
        assert (out / name).is_file(), name
    assert "metrics/mAP50-95(B)" in result.metrics
    assert yaml.safe_load((out / "train" / "args.yaml").read_text())["save_dir"] == str(out / "train")


def test_existing_run_needs_exist_ok(finetuned, pruned, dataset):
    with pytest.raises(BadInputError, match="already holds a fine-tuning run"):
        finetune_yolo(pruned[0], dataset, epochs=1, out_dir=finetuned["out"], **FAST)


def test_resume_from_last_continues_and_keeps_shapes(tmp_path, dataset, pruned):
    model, _ = pruned
    out = tmp_path / "run"

    class Interrupted(Exception):
        pass

    def stop_after_first_save(trainer):
        if trainer.epoch == 0:
            raise Interrupted

    with pytest.raises(Interrupted):
        finetune_yolo(model, dataset, epochs=2, out_dir=out, callbacks={"on_model_save": stop_after_first_save}, **FAST)
    last = out / "train" / "weights" / "last.pt"
    interrupted = torch.load(last, map_location="cpu", weights_only=False)
    assert interrupted["epoch"] == 0 and interrupted["optimizer"] is not None
    assert {p.dtype for p in interrupted["ema"].parameters()} == {torch.float32}

    result = finetune_yolo(None, None, epochs=None, out_dir=out, resume=True)
    rows = (out / "train" / "results.csv").read_text().strip().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["1", "2"]  # epoch 1 before, epoch 2 after resuming
    assert tensor_shapes(result.model) == tensor_shapes(model)
    assert yaml.safe_load((out / "train" / "args.yaml").read_text())["imgsz"] == 64  # the run's own settings

    with pytest.raises(BadInputError, match="nothing to resume"):
        finetune_yolo(None, None, epochs=None, out_dir=out, resume=True)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"data": "missing.yaml"}, "file not found"),
        ({"epochs": 0}, "epochs must be"),
        ({"epochs": 2.5}, "epochs must be"),
        ({"mosaic_strength": 1.0}, "unknown trainer argument 'mosaic_strength'"),
        ({"pretrained": False}, "set by detprune"),
        ({"yaml": {"train": "images/train", "names": CLASSES}}, "field 'val' is missing"),
        ({"yaml": {"train": "images/train", "val": "images/test", "names": CLASSES}}, "'val' points to"),
        ({"yaml": {"train": "images/train", "val": "images/val", "names": ["car"]}}, "head predicts 3"),
        ({"device": "99"}, "Invalid CUDA 'device=99'"),
    ],
)
def test_bad_inputs_give_one_line_errors(tmp_path, dataset, pruned, change, message):
    change = dict(change)
    data = dataset
    if "yaml" in change:
        data = tmp_path / "data.yaml"
        data.write_text(yaml.safe_dump({"path": str(dataset.parent), **change.pop("yaml")}))
    if "data" in change:
        data = tmp_path / change.pop("data")
    kwargs = {"epochs": 1, **FAST, **change}
    with pytest.raises(DetpruneError, match=message) as error:
        finetune_yolo(pruned[0], data, out_dir=tmp_path / "run", **kwargs)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "run" / "train").exists()


def test_cli_bad_input_is_one_line(tmp_path, finetuned, capsys):
    code = main(["finetune", "--model", str(finetuned["result"].best), "--data", str(tmp_path / "none.yaml"),
                 "--epochs", "1", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("detprune: error:") and err.count("\n") == 1 and "none.yaml" in err


def test_cli_finetunes_a_kitti_folder(tmp_path, finetuned, pruned, synthetic_kitti, capsys):
    out = tmp_path / "cli"
    code = main([
        "finetune", "--model", str(finetuned["result"].best), "--data", str(synthetic_kitti), "--epochs", "1",
        "--imgsz", "64", "--batch", "2", "--workers", "0", "--out", str(out), "--trainer-arg", "mosaic=0.5",
    ])
    printed = capsys.readouterr().out
    assert code == 0
    assert "metrics/mAP50-95(B)" in printed
    assert (out / "dataset" / "data.yaml").is_file()
    saved = torch.load(out / "train" / "weights" / "best.pt", map_location="cpu", weights_only=False)["model"]
    assert tensor_shapes(saved) == tensor_shapes(pruned[0])
    assert yaml.safe_load((out / "train" / "args.yaml").read_text())["mosaic"] == 0.5


def test_cli_flags_override_the_recipe(tmp_path, finetuned, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"epochs": 0, "data": str(tmp_path / "absent.yaml"), "imgsz": 64}))
    code = main(["finetune", "--config", str(recipe), "--model", str(finetuned["result"].best), "--epochs", "1",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert "absent.yaml" in err and "epochs" not in err  # --epochs 1 replaced the recipe's invalid 0


def test_ddp_workers_rebuild_the_pruned_trainer(tmp_path, dataset, pruned):
    """What a DDP worker does with the state file ultralytics writes for it yields the pruned model."""
    pytest.importorskip("cloudpickle", reason="ultralytics pickles the DDP worker state with cloudpickle")
    from ultralytics.utils import DEFAULT_CFG_DICT
    from ultralytics.utils.dist import generate_ddp_file
    from ultralytics.utils.patches import torch_load

    from detprune.adapters.yolo.pruned_trainer import PrunedDetectionTrainer, write_model_checkpoint

    model = pruned[0]
    start = write_model_checkpoint(model, tmp_path / "start.pt")
    parent = PrunedDetectionTrainer(overrides={
        "model": str(start), "data": str(dataset), "epochs": 1, "project": str(tmp_path), "name": "train",
        "exist_ok": True, **FAST,
    })
    script = Path(generate_ddp_file(parent))
    try:
        state = torch_load(script.with_suffix(".pt"), map_location="cpu")
    finally:
        script.unlink()
        script.with_suffix(".pt").unlink()
    worker = state["trainer"](
        cfg={**DEFAULT_CFG_DICT, "save_dir": ""}, overrides=state["args"], _callbacks=state["callbacks"]
    )
    worker.model = state["model"]
    worker.setup_model()
    assert state["trainer"] is PrunedDetectionTrainer
    assert tensor_shapes(worker.model) == tensor_shapes(model)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_finetune_uses_amp_and_resumes(tmp_path, dataset, pruned):
    model, _ = pruned
    out, amp = tmp_path / "run", []

    class Interrupted(Exception):
        pass

    def stop_after_first_save(trainer):
        if trainer.epoch == 0:
            raise Interrupted

    callbacks = {"on_train_start": lambda trainer: amp.append(bool(trainer.amp))}
    settings = {**FAST, "device": "0"}
    with pytest.raises(Interrupted):
        finetune_yolo(
            model,
            dataset,
            epochs=2,
            out_dir=out,
            callbacks={**callbacks, "on_model_save": stop_after_first_save},
            **settings,
        )
    result = finetune_yolo(None, None, epochs=None, out_dir=out, resume=True, callbacks=callbacks)
    assert amp == [True, True]  # detprune's AMP check passed without downloading anything
    saved = torch.load(result.best, map_location="cpu", weights_only=False)["model"]
    assert {p.dtype for p in saved.parameters()} == {torch.float32}
    assert tensor_shapes(saved) == tensor_shapes(model)
