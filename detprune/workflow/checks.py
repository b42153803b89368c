"""The checks of a :class:`~detprune.workflow.config.PruneConfig`, run once before a run writes.

A bad combination of settings is one line (:class:`~detprune.errors.BadInputError`), named by
its flag, and no output folder is touched.
"""

from __future__ import annotations

from typing import Any

from detprune.errors import BadInputError, DetpruneError

FLAGS = {
    "target_flops": "--target-flops",
    "target_params": "--target-params",
    "ratio": "--ratio",
    "target_latency": "--target-latency",
}


def check_all(config: Any) -> None:
    from detprune.defaults import LETTERBOX_MODES
    from detprune.pruning.targets import make_target
    from detprune.workflow.config import TARGET_FIELDS, normalise_imgsz

    given = [FLAGS[k] for k in TARGET_FIELDS if getattr(config, k) is not None]
    if len(given) != 1:
        raise BadInputError(
            "give one target: --target-flops, --target-params, --ratio or --target-latency"
            + (f" (got {' and '.join(given)})" if given else "")
        )
    if config.target_latency is not None or config.cost == "latency":
        _latency(config)
    try:
        make_target(
            ratio=config.ratio, target_flops=config.target_flops, target_params=config.target_params, strict=True
        )
    except DetpruneError as err:
        for k, flag in FLAGS.items():
            if str(err).startswith(k + " "):
                raise BadInputError(flag + str(err)[len(k) :]) from None
        raise
    _allocation(config)
    if config.class_weights is not None:
        from detprune.criteria.class_weights import parse_class_weights

        if config.scores is not None:
            raise BadInputError(
                "--class-weights weighs the scoring of --criterion; scores read from --scores are already made"
            )
        parse_class_weights(config.class_weights)  # bad syntax: one line before anything runs
    if config.round_to < 1:
        raise BadInputError(f"--round-to must be >= 1 (1 = no rounding), got {config.round_to}")
    if config.min_channels < 1:
        raise BadInputError(f"--min-channels must be >= 1, got {config.min_channels}")
    if not 0 < config.max_ratio < 1:
        raise BadInputError(f"--max-ratio must lie in (0, 1), got {config.max_ratio}")
    if config.finetune_epochs < 0 or config.latency_runs < 0:
        raise BadInputError("--finetune-epochs and --latency-runs must be >= 0")
    if config.finetune_epochs > 0 and not config.data:
        raise BadInputError("--finetune-epochs needs --data to train on")
    if config.imgsz is not None:
        config.imgsz = normalise_imgsz(config.imgsz)
    if config.batch_size < 1 or (config.max_images is not None and config.max_images < 1):
        raise BadInputError("--imgsz must be >= 32, --batch-size and --max-images >= 1")
    if config.letterbox not in LETTERBOX_MODES:
        raise BadInputError(f"--letterbox: choose {' or '.join(LETTERBOX_MODES)}, got {config.letterbox!r}")
    if (config.val_data or config.train_list) and not config.data:
        raise BadInputError("--val-data and --train-list go with --data: give --data too")
    if config.val_data and (config.val_list or config.val_count is not None or config.val_fraction is not None):
        raise BadInputError(
            "--val-data is the whole evaluation set: --val-list, --val-count and --val-fraction "
            "split --data instead; give one or the other"
        )
    if config.train_list and (config.val_count is not None or config.val_fraction is not None):
        raise BadInputError("--train-list names the training frames: --val-count and --val-fraction do not apply")
    if config.threads is not None and (isinstance(config.threads, bool) or config.threads < 1):
        raise BadInputError(f"--threads must be >= 1, got {config.threads}")
    if config.trainer_args is not None:
        from detprune.workflow.trainer_args import parse_trainer_args

        parse_trainer_args(config.trainer_args)
    _evaluation(config)
    _distillation(config)
    _schedule(config)


def _evaluation(config: Any) -> None:
    conf, iou, max_det = config.conf, config.nms_iou, config.max_det
    if conf is not None and not 0 <= conf < 1:
        raise BadInputError(f"--conf must lie in [0, 1), got {conf}")
    if iou is not None and not 0 < iou <= 1:
        raise BadInputError(f"--nms-iou must lie in (0, 1], got {iou}")
    if max_det is not None and max_det < 1:
        raise BadInputError(f"--max-det must be >= 1, got {max_det}")


def _distillation(config: Any) -> None:
    from detprune.train.distill import check_weight
    from detprune.workflow.config import distils

    try:
        check_weight(config.distill_weight)
    except DetpruneError as err:
        raise BadInputError(f"--distill-weight: {err}") from None
    if config.distill and config.finetune_epochs <= 0:
        raise BadInputError("--distill distils while fine-tuning: give --finetune-epochs")
    if config.distill and config.schedule != "one-shot":
        raise BadInputError(f"--distill applies to --schedule one-shot, not {config.schedule}")
    if config.distill_weight is not None and not distils(config):
        raise BadInputError("--distill-weight needs distillation: --distill, --finetune-epochs, --schedule one-shot")


def _allocation(config: Any) -> None:
    from detprune.criteria.base import available_criteria
    from detprune.pruning.policies import allocation_names, cost_names
    from detprune.workflow.config import allocation

    if config.allocation is not None and config.allocation not in allocation_names():
        raise BadInputError(f"--allocation must be one of {', '.join(allocation_names())}, got {config.allocation!r}")
    if config.per_layer and config.allocation not in (None, "global", "uniform"):
        raise BadInputError(f"--per-layer is --allocation uniform; it contradicts --allocation {config.allocation}")
    if config.cost is not None and (config.cost not in cost_names() or allocation(config) != "cost"):
        raise BadInputError(
            f"--cost is flops, params or latency, with --allocation cost (got --cost {config.cost!r}, "
            f"--allocation {allocation(config)})"
        )
    if config.widths_from is not None:
        if config.widths_from not in available_criteria():
            raise BadInputError(
                f"--widths-from: unknown criterion {config.widths_from!r}; "
                f"choose from {', '.join(available_criteria())}"
            )
        if config.schedule != "one-shot":
            raise BadInputError(f"--widths-from applies to --schedule one-shot, not {config.schedule}")


def _latency(config: Any) -> None:
    from detprune.pruning.latency_target import check_backend
    from detprune.pruning.targets import check_fraction
    from detprune.workflow.config import uses_table

    what = "--target-latency" if config.target_latency is not None else "--cost latency"
    if config.backend is None:
        raise BadInputError(
            f"{what} needs --backend: where the latency is measured (onnxruntime, torch-cuda or tensorrt)"
        )
    if config.target_latency is not None:
        check_fraction("--target-latency", config.target_latency)
    if not 0 < config.latency_tolerance < 1 or config.search_runs < 1:
        raise BadInputError("--latency-tolerance must lie in (0, 1) and --search-runs be >= 1")
    if (config.latency_threads is not None and config.latency_threads < 1) or config.table_check < 0:
        raise BadInputError("--latency-threads must be >= 1 and --table-check >= 0")
    check_backend(config.backend)
    if uses_table(config) and config.backend == "tensorrt":
        raise BadInputError(
            "latency tables are measured on onnxruntime or torch-cuda; for tensorrt use "
            "--latency-search flops (and --cost flops)"
        )


def _schedule(config: Any) -> None:
    """The schedule settings: flags of another schedule, counts, fractions."""
    from detprune.workflow.config import SCHEDULES

    schedule = config.schedule
    if schedule not in SCHEDULES:
        raise BadInputError(f"--schedule: choose {', '.join(SCHEDULES)}, got {schedule!r}")
    given = {
        flag: getattr(config, dest) is not None
        for flag, dest in (
            ("--megabatches", "megabatches"),
            ("--steps", "steps"),
            ("--sparsity-schedule", "sparsity_schedule"),
            ("--replay", "replay"),
            ("--epochs-per-step", "epochs_per_step"),
        )
    }
    allowed = {
        "one-shot": set(),
        "iterative": {"--steps", "--sparsity-schedule", "--epochs-per-step"},
        "progressive": {"--megabatches", "--sparsity-schedule", "--replay", "--epochs-per-step"},
    }[schedule]
    wrong = [flag for flag, present in given.items() if present and flag not in allowed]
    if wrong:
        raise BadInputError(f"{', '.join(wrong)}: not an option of --schedule {schedule}")
    if schedule == "one-shot":
        return
    if not config.data:
        raise BadInputError(f"--schedule {schedule} trains between cuts: give --data")
    if config.target_flops is None:
        raise BadInputError(f"--schedule {schedule} steps down to a FLOPs target: give --target-flops")
    if config.scores is not None:
        raise BadInputError(f"--schedule {schedule} scores the model again at every step: --scores does not apply")
    count = config.megabatches if schedule == "progressive" else config.steps
    if count is not None and count < 2:
        name = "--megabatches" if schedule == "progressive" else "--steps"
        raise BadInputError(f"{name} must be >= 2 (1 is --schedule one-shot), got {count}")
    if config.replay is not None and not 0.0 <= config.replay <= 1.0:
        raise BadInputError(f"--replay is a fraction in [0, 1], got {config.replay}")
    if config.epochs_per_step is not None:
        if config.epochs_per_step < 1:
            raise BadInputError(f"--epochs-per-step must be >= 1, got {config.epochs_per_step}")
        if config.finetune_epochs > 0:
            raise BadInputError("give --epochs-per-step or --finetune-epochs for a scheduled run, not both")
