"""Fine-tune a (pruned) ultralytics YOLO model with the ultralytics trainer.

A run writes one folder, ``out_dir``::

    out_dir/
      start.pt        the model as given (the trainer starts from this checkpoint)
      teacher.pt      with a teacher: the unpruned model it distils from (ultralytics' distill_model)
      train_data.yaml the checked dataset yaml the trainer reads (absolute paths, no download:)
      train/          ultralytics' run folder: args.yaml, results.csv, weights/{best,last}.pt
      finetune.json   paths, metrics and time of the run

``train/weights/best.pt`` and ``last.pt`` are ordinary ultralytics checkpoints in FP32 with the
pruned shapes: ``ultralytics.YOLO(best)`` loads them where detprune is installed. With a
teacher they hold the student alone (see :mod:`detprune.adapters.yolo.distill`).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from detprune.errors import BadInputError, DetpruneError, UnsupportedError
from detprune.adapters.yolo.datasets import check_data_yaml, num_classes, write_checked_yaml
from detprune.adapters.yolo.distill import student_of
from detprune.train.structure import check_same_structure, parameter_count, tensor_shapes
from detprune.utils.atomic import write_text

RUN_NAME = "train"  # ultralytics' run folder inside out_dir
START_CHECKPOINT = "start.pt"  # the model as given, outside the run folder (DDP's launcher empties that)
TRAINER_DATA_YAML = "train_data.yaml"  # the checked copy of the dataset yaml the trainer reads

# Defaults of a new run; a resumed run keeps its own values unless these are given again.
# workers is left to ultralytics: 8 per process on GPUs, 0 on CPU (where loading is not the bottleneck).
NEW_RUN_DEFAULTS = {"imgsz": 640, "batch": 16, "device": "cpu", "patience": 100, "plots": False}

# Trainer arguments finetune_yolo sets itself: passing them in **overrides is an error.
_RESERVED = {
    "model",
    "data",
    "epochs",
    "project",
    "name",
    "exist_ok",
    "resume",
    "pretrained",
    "mode",
    "task",
    "save_dir",
}
# What ultralytics lets a resumed run change (BaseTrainer.check_resume), besides the named arguments.
_RESUME_ADJUSTABLE = {"close_mosaic", "augmentations", "save_period", "cache", "time", "freeze", "val", "channels_last"}


@dataclass
class FinetuneResult:
    """What a fine-tuning run produced."""

    model: nn.Module  # the best model (FP32, eval mode), read back from ``best``
    best: Path  # checkpoint of the best epoch (``last`` if no epoch was validated as best)
    last: Path  # checkpoint of the final epoch
    run_dir: Path  # ultralytics' run folder (args.yaml, results.csv, weights/)
    metrics: dict[str, float] = field(default_factory=dict)  # validation of ``best`` (mAP50-95(B), ...)
    seconds: float = 0.0  # wall-clock time of the training call


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _detection_model(model: Any) -> nn.Module:
    """The ``DetectionModel`` inside ``model`` (an ``ultralytics.YOLO`` object is unwrapped)."""
    from ultralytics.engine.model import Model
    from ultralytics.nn.tasks import DetectionModel, guess_model_task

    if isinstance(model, Model):
        model = model.model
    if not isinstance(model, DetectionModel):
        raise BadInputError(f"fine-tuning needs an ultralytics DetectionModel, got {type(model).__name__}")
    task = getattr(model, "task", None) or guess_model_task(model)
    if task != "detect":
        raise UnsupportedError(
            f"fine-tuning supports detection models; this {type(model).__name__} is a '{task}' model"
        )
    return model


def _unwrapped(model: Any) -> Any:
    """The module inside an ``ultralytics.YOLO`` object; anything else as it is."""
    from ultralytics.engine.model import Model

    return model.model if isinstance(model, Model) else model


def _check_overrides(overrides: dict[str, Any], resume: bool) -> None:
    from ultralytics.utils import DEFAULT_CFG_KEYS

    for key, value in overrides.items():
        if key in _RESERVED:
            raise BadInputError(f"trainer argument '{key}' is set by detprune (model, data, epochs, out_dir, resume)")
        if key not in DEFAULT_CFG_KEYS:
            raise BadInputError(
                f"unknown trainer argument '{key}' (see ultralytics' cfg/default.yaml for the valid ones)"
            )
        if key == "quantize" and value not in (None, False):
            raise UnsupportedError(f"trainer argument '{key}' is not supported for fine-tuning pruned models")
        if key == "distill_model" and value is not None:
            raise BadInputError(
                "give the unpruned model as teacher= (--teacher), not as the trainer argument distill_model"
            )
        if resume and key not in _RESUME_ADJUSTABLE:
            raise BadInputError(
                f"a resumed run keeps its hyperparameters; '{key}' cannot change (start a new run instead)"
            )


def _check_epochs(epochs: Any) -> None:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise BadInputError(f"epochs must be a whole number >= 1, got {epochs!r}")


def _clear_previous_run(run_dir: Path, exist_ok: bool) -> None:
    """A new run starts in an empty run folder; an old run there is replaced only with ``exist_ok``."""
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return
    if not exist_ok:
        raise BadInputError(
            f"{run_dir}: already holds a fine-tuning run; pass exist_ok (--exist-ok) to replace it, "
            "resume (--resume) to continue it, or choose another output folder"
        )
    if not ((run_dir / "args.yaml").exists() or (run_dir / "weights").is_dir()):
        raise BadInputError(f"{run_dir}: exists and is not a fine-tuning run folder; refusing to delete it")
    shutil.rmtree(run_dir)


def _resume_checkpoint(last: Path, model: nn.Module | None, epochs: int | None) -> tuple[dict, dict]:
    """(checkpoint, its train_args) of an unfinished run, checked against the given model and epochs."""
    from detprune.utils.checkpoints import load_torch_file

    if not last.is_file():
        raise BadInputError(f"{last}: no checkpoint to resume from; start a new run without resume")
    ckpt = load_torch_file(last)  # no code stored in the file runs; damaged files are one-line errors
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("ema"), nn.Module) or ckpt.get("optimizer") is None:
        raise BadInputError(f"{last}: the run finished all its epochs; nothing to resume (start a new run)")
    args = ckpt.get("train_args") or {}
    if epochs is not None and epochs != args.get("epochs"):
        raise BadInputError(
            f"{last}: the run was started for {args.get('epochs')} epochs; resume continues to that number"
        )
    if model is not None:
        check_same_structure(tensor_shapes(student_of(ckpt["ema"])), model, f"the model given to resume {last}")
    return ckpt, args


def finetune_yolo(
    model: nn.Module | None,
    data_yaml: str | Path | None,
    *,
    epochs: int | None,
    out_dir: str | Path,
    imgsz: int | None = None,
    batch: int | None = None,
    device: str | int | None = None,
    workers: int | None = None,
    lr0: float | None = None,
    resume: bool = False,
    exist_ok: bool = False,
    seed: int = 0,
    patience: int | None = None,
    plots: bool | None = None,
    callbacks: dict[str, Callable] | None = None,
    teacher: nn.Module | None = None,
    distill_weight: float | None = None,
    class_weights: Mapping[str, float] | None = None,
    progress_label: str = "fine-tune epochs",
    **overrides: Any,
) -> FinetuneResult:
    """Fine-tune ``model`` on the YOLO dataset ``data_yaml`` with ultralytics' trainer, keeping its shapes.

    Training is ultralytics' own (its loss, optimizer, EMA, mosaic and the other default
    augmentations, validation and early stopping after ``patience`` epochs without gain); any
    other trainer argument of ultralytics' ``default.yaml`` can be passed as a keyword
    (``mosaic=0.5``, ``freeze=10``, ``optimizer="SGD"``, ...). ``lr0`` selects SGD unless an
    optimizer is named, because ultralytics' automatic optimizer choice ignores ``lr0``.
    ``device`` is ``"cpu"``, ``"0"`` or, for DDP on several GPUs, ``"0,1,2,3"`` (see
    docs/finetune.md). ``callbacks`` maps ultralytics trainer events to functions of the trainer.
    A new run uses ``NEW_RUN_DEFAULTS`` (imgsz 640, batch 16, device cpu, patience 100, no
    plots) for the arguments left at None, and ultralytics' defaults for everything else.

    ``resume=True`` continues the unfinished run in ``out_dir`` from its ``last.pt``: the model
    comes from that checkpoint (``model`` may be None; if given, it must have the same shapes),
    ``data_yaml`` and ``epochs`` may be None, and ``imgsz``, ``batch``, ``device``, ``workers``,
    ``patience`` and ``plots`` keep the run's values unless given. Without ``resume`` a previous
    run in ``out_dir`` is an error unless ``exist_ok=True``, which replaces it.

    ``teacher`` (the unpruned model, same classes and head levels) turns on knowledge
    distillation with ultralytics' ``DistillationModel``; ``distill_weight`` is its ``dis``
    (default :data:`~detprune.adapters.yolo.distill.DEFAULT_DISTILL_WEIGHT`, 2.0; ultralytics' own
    is 6.0). The teacher is frozen and never saved with the student; a resumed run distils from
    the teacher it started with.

    ``class_weights`` (``{class name: weight > 0}``, classes not named weigh 1) scales each
    class's share of the classification loss: ultralytics' own per-class BCE weights
    (``model.class_weights``, as its ``cls_pw`` sets from class frequencies), here given by the
    user. Not with ``resume`` (the weights are not stored with the run) or DDP.

    The caller's ``model`` is not modified. Raises :class:`BadInputError` for bad arguments and
    :class:`DetpruneError` if a checkpoint does not have the given model's shapes.
    ``progress_label`` names the epoch bar (a baseline trained from scratch is not a fine-tune).
    """
    out_dir = Path(out_dir).resolve()
    if not resume or epochs is not None:
        _check_epochs(epochs)
    _check_overrides(overrides, resume)
    _check_distillation(teacher, distill_weight, resume, overrides)
    given = {"imgsz": imgsz, "batch": batch, "device": device, "workers": workers, "patience": patience, "plots": plots}
    given = {k: (str(v) if k == "device" else v) for k, v in given.items() if v is not None}
    if lr0 is not None:
        if resume:
            raise BadInputError("a resumed run keeps its hyperparameters; lr0 cannot change (start a new run instead)")
        overrides = {"optimizer": "SGD", **overrides, "lr0": float(lr0)}
    table = _class_weight_table(class_weights, model, resume, given.get("device"))
    if resume:
        args, expected = _resume_args(model, data_yaml, epochs, out_dir, {**given, **overrides})
    else:
        if teacher is not None and distill_weight is None and "dis" not in overrides:
            from detprune.adapters.yolo.distill import DEFAULT_DISTILL_WEIGHT

            distill_weight = DEFAULT_DISTILL_WEIGHT
        if distill_weight is not None:
            overrides = {**overrides, "dis": float(distill_weight)}
        settings = {**given, "seed": seed, **overrides}
        args, expected = _new_run_args(model, data_yaml, epochs, out_dir, exist_ok, settings, teacher)
    return _run(args, expected, out_dir / RUN_NAME, callbacks or {}, progress_label, table)


def _class_weight_table(class_weights, model, resume: bool, device: str | None) -> torch.Tensor | None:
    """One weight per class of ``model``'s head, in its class order, or None when none are given."""
    from detprune.criteria.class_weights import check_class_weights

    weights = check_class_weights(class_weights)
    if not weights:
        return None
    if resume:
        raise BadInputError("class weights are not stored with a run: give them to a new run, not to --resume")
    if device is not None and "," in device:
        raise BadInputError("class weights reach one process only: fine-tune on one device (not DDP)")
    names = getattr(_detection_model(model), "names", None) or {}
    names = [str(n) for n in (names.values() if isinstance(names, dict) else names)]
    check_class_weights(weights, names)  # a class the model does not have: one line
    return torch.tensor([float(weights.get(name, 1.0)) for name in names])


def _check_distillation(teacher, distill_weight, resume: bool, overrides: dict) -> None:
    from detprune.train.distill import check_weight

    check_weight(distill_weight)
    check_weight(overrides.get("dis"))
    if resume and (teacher is not None or distill_weight is not None):
        raise BadInputError(
            "a resumed run keeps its teacher and distillation weight; give neither (start a new run instead)"
        )
    if not resume and distill_weight is not None and teacher is None:
        raise BadInputError("a distillation weight needs a teacher (the unpruned model)")


def _new_run_args(
    model, data_yaml, epochs: int, out_dir: Path, exist_ok: bool, settings: dict, teacher: nn.Module | None = None
) -> tuple[dict, dict]:
    """(trainer arguments, expected shapes) of a new run; writes the start checkpoint and dataset yaml."""
    from detprune.adapters.yolo.pruned_trainer import write_model_checkpoint

    if model is None:
        raise BadInputError("a model is needed to start fine-tuning (only resume reads it from the run)")
    if data_yaml is None:
        raise BadInputError("a dataset yaml is needed to start fine-tuning")
    detection = _detection_model(model)
    if teacher is not None:
        from detprune.adapters.yolo.distill import check_teacher

        teacher = _unwrapped(teacher)
        check_teacher(teacher, detection)
    data = check_data_yaml(data_yaml)
    if num_classes(data) != int(detection.model[-1].nc):
        raise BadInputError(
            f"{data_yaml}: the dataset has {num_classes(data)} classes but the model's head predicts "
            f"{int(detection.model[-1].nc)}; re-head the model for the dataset's classes before pruning"
        )
    _clear_previous_run(out_dir / RUN_NAME, exist_ok)
    start = write_model_checkpoint(detection, out_dir / START_CHECKPOINT)
    if teacher is not None:
        from detprune.adapters.yolo.distill import TEACHER_CHECKPOINT, write_teacher

        settings = {**settings, "distill_model": str(write_teacher(teacher, out_dir / TEACHER_CHECKPOINT))}
    data_path = write_checked_yaml(data_yaml, out_dir / TRAINER_DATA_YAML)
    args = {
        **NEW_RUN_DEFAULTS,
        **settings,
        "model": str(start),  # DDP workers and resumed runs read the pruned module from checkpoints too
        "data": str(data_path),
        "epochs": epochs,
        "project": str(out_dir),
        "name": RUN_NAME,
        "exist_ok": True,  # the folder question was settled above
        "pretrained": True,  # False would make ultralytics build a fresh model from the yaml
    }
    return args, tensor_shapes(detection)


def _resume_args(model, data_yaml, epochs: int | None, out_dir: Path, settings: dict) -> tuple[dict, dict]:
    """(trainer arguments, expected shapes) to continue the unfinished run in ``out_dir``."""
    last = out_dir / RUN_NAME / "weights" / "last.pt"
    detection = _detection_model(model) if model is not None else None
    ckpt, run_args = _resume_checkpoint(last, detection, epochs)
    # The run's own file names what ultralytics loads next, with its unrestricted loader and its own path rules:
    # each path is checked here and handed over as an override ultralytics' check_resume applies.
    teacher = run_args.get("distill_model")
    if teacher:
        from detprune.utils.checkpoints import load_torch_file

        if not Path(str(teacher)).is_file():
            raise BadInputError(f"{teacher}: the teacher this run distils from is missing; it cannot be resumed")
        load_torch_file(teacher, what="teacher checkpoint")  # refuses code in the file before ultralytics reads it
    source = data_yaml if data_yaml is not None else run_args.get("data") or ""
    data_path = write_checked_yaml(source, out_dir / TRAINER_DATA_YAML)  # absolute paths, no download:
    resumed = {"resume": str(last), "data": str(data_path), "distill_model": str(teacher) if teacher else None,
               "save_dir": str(out_dir / RUN_NAME)}  # never where the file says
    return {**settings, **resumed}, tensor_shapes(student_of(ckpt["ema"]))


def _as_built(model: nn.Module) -> nn.Module:
    """Gradients enabled as ultralytics builds a model (all but the fixed DFL projection).

    Checkpoints store frozen parameters; a model handed on to scoring or pruning needs gradients.
    """
    from ultralytics.nn.modules.block import DFL

    for p in model.parameters():
        p.requires_grad_(p.is_floating_point())
    for module in model.modules():
        if isinstance(module, DFL):
            module.requires_grad_(False)
    return model


def _epoch_bar(trainer, label: str = "fine-tune epochs"):
    """One bar over the epochs with the latest validation mAP50 (the training loss on epochs that
    were not validated): ultralytics' own output is silenced by ``YOLO_VERBOSE=False``, and a long
    fine-tune should not look stalled."""
    from detprune.utils.progress import progress_counter

    bar = progress_counter(trainer.epochs, desc=label)

    def start(tr) -> None:  # a resumed run starts past epoch 0
        bar.n = tr.start_epoch
        bar.refresh()

    def advance(tr) -> None:
        # the trainer calls this once more after its last epoch (the final validation of best.pt):
        # the count follows the epoch index, so that call does not count an epoch more
        bar.n = min(tr.epochs, tr.epoch + 1)
        validated = bool(getattr(tr.args, "val", True)) or tr.epoch + 1 >= tr.epochs
        value = (tr.metrics or {}).get("metrics/mAP50(B)")
        if validated and value is not None:
            bar.set_postfix(mAP50=f"{float(value):.3f}")
        elif getattr(tr, "tloss", None) is not None:  # the epoch's mean training loss (box + cls + dfl)
            loss = tr.tloss
            total = sum(float(v) for v in loss.values()) if isinstance(loss, dict) else float(loss.sum())
            bar.set_postfix(loss=f"{total:.3f}")
        else:
            bar.refresh()

    trainer.add_callback("on_train_start", start)
    trainer.add_callback("on_fit_epoch_end", advance)
    return bar


def _run(args: dict, expected: dict, run_dir: Path, callbacks: dict[str, Callable], label: str = "fine-tune epochs",
         class_weights: torch.Tensor | None = None) -> FinetuneResult:
    from detprune.adapters.yolo import read_checkpoint
    from detprune.adapters.yolo.pruned_trainer import PrunedDetectionTrainer

    threads = torch.get_num_threads()
    try:
        trainer = PrunedDetectionTrainer(overrides=args)
    except (RuntimeError, ValueError) as error:  # ultralytics' dataset and device checks
        raise BadInputError(f"the ultralytics trainer refused the run: {_one_line(error)}") from None
    finally:
        # ultralytics' CPU device selection leaves one core idle (cpu_count - 1 threads): on a
        # 2-core machine that halves training speed, so the caller's thread count is restored.
        torch.set_num_threads(threads)
    if trainer.save_dir != run_dir:
        raise DetpruneError(f"the trainer chose {trainer.save_dir} instead of {run_dir}")
    trainer.class_weight_table = class_weights
    for event, function in callbacks.items():
        trainer.add_callback(event, function)
    bar = _epoch_bar(trainer, label)
    started = time.perf_counter()
    try:
        trainer.train()
    except FileNotFoundError as error:  # e.g. a split folder without images
        raise BadInputError(f"{args['data']}: {_one_line(error)}") from None
    finally:
        bar.close()
        torch.set_num_threads(threads)  # the final validation selects the device again
    seconds = time.perf_counter() - started

    best = trainer.best if trainer.best.exists() else trainer.last
    if not best.exists():
        raise DetpruneError(f"{run_dir}: training ended without writing a checkpoint")
    model, ckpt = read_checkpoint(best)
    check_same_structure(expected, _as_built(model), f"checkpoint {best}")
    raw = trainer.metrics if isinstance(trainer.metrics, dict) and trainer.metrics else ckpt.get("train_metrics") or {}
    metrics = {str(k): float(v) for k, v in raw.items() if isinstance(v, (int, float)) or hasattr(v, "__float__")}
    result = FinetuneResult(
        model=model, best=best, last=trainer.last, run_dir=run_dir, metrics=metrics, seconds=seconds
    )
    summary = {
        "best": str(best),
        "last": str(trainer.last),
        "run_dir": str(run_dir),
        "epochs": int(trainer.args.epochs),
        "seconds": round(seconds, 3),
        "parameters": parameter_count(model),
        "metrics": metrics,
        "distillation": _distillation_summary(trainer.args),
        **({"class_weights": class_weights.tolist()} if class_weights is not None else {}),
    }
    write_text(run_dir.parent / "finetune.json", json.dumps(summary, indent=2) + "\n")
    return result


def _distillation_summary(args) -> dict | None:
    """The teacher and weight of a distilling run (ultralytics' ``distill_model`` and ``dis``)."""
    teacher = getattr(args, "distill_model", None)
    return None if not teacher else {"teacher": str(teacher), "weight": float(args.dis)}
