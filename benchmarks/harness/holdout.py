"""compare_criteria's protocol: one fixed train/val split at a square input, a cached baseline, pruned runs.

compare_schedules and search_widths start from the same cached baseline and fine-tune and measure
their models the same way, so their rows sit beside compare_criteria's; they share it from here.
``args`` is compare_criteria's parsed arguments, or any namespace with the same fields
(``protocol_args`` builds one).
"""

from __future__ import annotations

import argparse
import copy
import inspect
import time
from pathlib import Path
from typing import Any

from harness.baseline import CHECKPOINT, baseline_folder, cached_baseline
from harness.cache import cached_result, settings_key, store_result
from harness.cut import cut_as_run
from harness.paths import SHARED

# (column, metric path in adapter.evaluate's dict); AP values are fractions, shown in points
METRICS = (("mAP50", ("mAP50",)), ("mAP50-95", ("mAP",)), ("AP_small", ("AP_small",)),
           ("KITTI mod", ("kitti", "mean", "moderate")))

# compare_criteria's defaults of the settings that key its cached baseline and runs
DEFAULTS = {"data": str(SHARED / "data" / "kitti_tiny"), "model": "yolov5n.yaml",
            "weights": str(SHARED / "weights" / "yolov5n_coco_backbone_neck.pt"), "val_count": 15, "split_seed": 0,
            "car_max_channels": 2}


def protocol_args(**given) -> argparse.Namespace:
    """compare_criteria's settings for another script: ``given`` (imgsz, batch, lr, baseline_epochs,
    finetune_epochs, round_to, latency_runs, out, ...) over compare_criteria's defaults."""
    return argparse.Namespace(**{**DEFAULTS, **given})


def train_options(args, seed: int) -> dict:
    # SGD with a one-epoch warm-up: a new head on a pretrained body learns these few frames in
    # tens of epochs this way; ultralytics' automatic choice (AdamW, small lr) needs far more.
    return dict(imgsz=args.imgsz, batch=args.batch, lr=args.lr, seed=seed, warmup_epochs=1)


def baseline_settings(args) -> dict:
    """Every setting the baseline depends on: its cache folder is ``baseline-<settings_key>``."""
    return {"model": args.model, "weights": str(args.weights), "data": str(Path(args.data).resolve()),
            "val_count": args.val_count, "split_seed": args.split_seed, "epochs": args.baseline_epochs,
            **train_options(args, args.split_seed), "init_seed": args.split_seed}


def baseline(args, adapter, train, val, log) -> tuple[Any, str]:
    """The trained, pruning-ready baseline, from the cache when its settings match."""
    from detprune.workflow.stages import finetune_variant

    settings = baseline_settings(args)
    folder = baseline_folder(args.out, settings)

    def train_it():
        log(f"baseline: {args.model} + {Path(args.weights).name}, training {args.baseline_epochs} epochs at "
            f"{args.imgsz} px")
        model = adapter.load(args.model, weights=args.weights, class_names=train.class_names,
                             init_seed=args.split_seed)
        return finetune_variant(adapter, model, train, val, epochs=args.baseline_epochs, out_dir=folder,
                                **train_options(args, args.split_seed)), {}

    model, _ = cached_baseline(adapter, folder, settings, train_it, log)
    return model, str(folder / CHECKPOINT)


def baseline_key(checkpoint: str) -> str:
    """What a run's cached result depends on of the baseline: its file and when it was written."""
    return settings_key({"checkpoint": checkpoint, "mtime": Path(checkpoint).stat().st_mtime})


def measure(args, adapter, model, val) -> dict:
    """The METRICS columns on the val frames, params, FLOPs and the ONNX Runtime CPU median (batch 1)."""
    from detprune.workflow.measure import cpu_latency, model_cost

    metrics = adapter.evaluate(model, val, imgsz=args.imgsz, batch_size=args.batch)
    cost = model_cost(adapter, model, args.imgsz)
    row = {"params": cost.params, "flops": cost.flops}
    for column, path in METRICS:
        value: Any = metrics
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        row[column] = None if value is None else 100.0 * float(value)
    row["latency_ms"] = (
        cpu_latency(adapter, model, args.imgsz, runs=args.latency_runs).median_ms if args.latency_runs else None
    )
    return row


def criterion_options(name: str, seed: int, args) -> dict:
    """The seed for criteria that take one (random, taylor's image order); no progress bars;
    CAR's channel sampling (each masked channel costs one pass over the scoring images)."""
    from detprune.criteria import get_criterion

    accepted = set(inspect.signature(type(get_criterion(name)).__init__).parameters)
    options = (("seed", seed), ("progress", False), ("max_channels_per_layer", args.car_max_channels))
    return {k: v for k, v in options if k in accepted}


def run_settings(args, base_key: str, target: float, criterion: str, seed: int) -> dict:
    """What one pruned run's cached result depends on."""
    return {"baseline": base_key, "target": target, "criterion": criterion, "seed": seed,
            "round_to": args.round_to, "epochs": args.finetune_epochs, "latency_runs": args.latency_runs,
            **train_options(args, seed)}


def run_dir(out, target: float, criterion: str, seed: int) -> Path:
    return Path(out) / "runs" / f"flops{target:g}" / criterion / f"seed{seed}"


def one_run(
    args, adapter, base_model, base_key: str, train, val, target: float, criterion: str, seed: int, log
) -> dict:
    """Score, prune, fine-tune, measure one (target, criterion, seed); reused when already done."""
    from detprune.workflow.stages import finetune_variant, score_channels

    settings = run_settings(args, base_key, target, criterion, seed)
    folder = run_dir(args.out, target, criterion, seed)
    cached = cached_result(folder, settings)
    if cached is not None:
        return cached
    tick = time.perf_counter()
    model = copy.deepcopy(base_model)
    scores = score_channels(adapter, model, train, criterion, imgsz=args.imgsz, batch_size=args.batch,
                            **criterion_options(criterion, seed, args))
    scored = time.perf_counter()
    pruned = cut_as_run(adapter, model, scores, target_flops=target, round_to=args.round_to, imgsz=args.imgsz)
    tuned = finetune_variant(adapter, pruned.model, train, val, epochs=args.finetune_epochs, out_dir=folder,
                             **train_options(args, seed))
    result = {"settings": settings, "flops_kept": pruned.achieved["flops"], **measure(args, adapter, tuned, val),
              "seconds": {"score": scored - tick, "total": time.perf_counter() - tick}}
    return store_result(folder, result)


def fmt(cell: Any, digits: int = 1) -> str:
    """A table cell: "mean ± std" of a summary dict, the number alone, "-" for None."""
    if cell is None:
        return "-"
    if isinstance(cell, dict):
        return f"{cell['mean']:.{digits}f} ± {cell['std']:.{digits}f}"
    return f"{cell:.{digits}f}"
