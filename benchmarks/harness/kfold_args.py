"""accuracy.py's arguments: they key its cached fold baselines and cells, so the tools that read that
cache (catro_ridge, equal_latency, latency_table_fit: ``--accuracy-args``) parse them the same way."""

from __future__ import annotations

import argparse
import re

from detprune.criteria.class_weights import parse_class_weights
from detprune.errors import DetpruneError
from harness.criteria import criterion_options, split_allocation, split_criterion
from harness.paths import SHARED, add_detector_arguments
from harness.rect import add_training_arguments


def _list(text: str, kind=str) -> list:
    return [kind(x.strip()) for x in text.split(",") if x.strip()]


# accuracy.py's arguments whose cache another tool reads by default
ACCURACY_ARGS = "--threads 1 --baseline-epochs 50 --finetune-epochs 10 --out runs/accuracy"


def add_accuracy_args(p: argparse.ArgumentParser, reads: str = "baselines") -> None:
    """``--accuracy-args``: the accuracy benchmark's arguments, which key the cache a tool reads."""
    p.add_argument("--accuracy-args", default=ACCURACY_ARGS,
                   help=f"the accuracy benchmark's arguments that key its cached {reads}")


def parse_kfold_args(argv: list[str] | None = None, description: str | None = None) -> argparse.Namespace:
    from detprune.criteria import get_criterion

    p = argparse.ArgumentParser(description=description)
    add_detector_arguments(p, SHARED / "data" / "kitti_tiny")
    p.add_argument("--folds", type=int, default=3, help="k of k-fold cross-validation")
    p.add_argument("--fold-seed", type=int, default=0, help="seed of the fold assignment")
    p.add_argument("--only-folds", default=None, help="run these folds only (comma-separated indices)")
    add_training_arguments(p, baseline_epochs=80, finetune_epochs=20)
    p.add_argument("--target", type=float, default=0.5, help="FLOPs kept by the grid of configurations")
    p.add_argument("--criteria", default="saliency,taylor,l1",
                   help="criteria, each NAME or NAME:KEY=VALUE[:KEY=VALUE] with its options, e.g. catro:ridge=0")
    p.add_argument(
        "--allocations",
        default="global,cost",
        help="how the cut is spread over layers: global, uniform, cost (FLOPs), latency (knapsack on a measured "
        "ONNX Runtime latency table; --target is then the predicted latency kept), or widths:CRITERION-ALLOCATION "
        "(the widths another criterion gets under that allocation, e.g. widths:saliency-global)",
    )
    p.add_argument("--class-weights", default=None, metavar="CLASS=W,...",
                   help="class priorities of the scoring criteria, e.g. Pedestrian=3,Cyclist=3 (default: none)")
    p.add_argument("--finetune-class-weights", default=None, metavar="CLASS=W,...",
                   help="class priorities of the fine-tuning loss (ultralytics' per-class BCE weights) (default: none)")
    p.add_argument("--car-images", type=int, default=8,
                   help="training frames CAR evaluates once per masked channel (its cost: passes x these images)")
    p.add_argument("--distill", default="off,on", help="fine-tune plain (off) and/or distilled from the baseline (on)")
    p.add_argument("--extra-targets", default="0.7,0.3", help="targets run for the best configuration at --target")
    p.add_argument("--seed", type=int, default=0, help="seed of scoring order and training")
    p.add_argument("--repeat", default="rerun,seed1",
                   help="repeats of the first configuration on fold 0: 'rerun' (same seed, from scratch), 'seedN'")
    p.add_argument("--round-to", type=int, default=8)
    p.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads")
    p.add_argument(
        "--latency-runs", type=int, default=30, help="interleaved ONNX Runtime runs per model pair (0 = none)"
    )
    p.add_argument("--stop-at", default=None,
                   help="UTC time HH:MM after which no new cell starts; the rest are listed as not run")
    p.add_argument("--reevaluate", action="store_true",
                   help="score every finished cell's saved model again with the installed evaluation code")
    p.add_argument("--baselines-only", action="store_true", help="train and cache the fold baselines, then stop")
    p.add_argument(
        "--quick",
        action="store_true",
        help="reduced check: fold 0 only, baseline 10 epochs, fine-tune 3, saliency,l1 global plain, no extras",
    )
    p.add_argument("--out", default="runs/accuracy")
    args = p.parse_args(argv)
    if args.quick:
        args.only_folds, args.baseline_epochs, args.finetune_epochs = "0", 10, 3
        args.criteria, args.allocations, args.distill, args.extra_targets, args.repeat = (
            "saliency,l1",
            "global",
            "off",
            "",
            "",
        )
        args.out = args.out if args.out != "runs/accuracy" else "runs/accuracy_quick"
    args.criteria, args.allocations = _list(args.criteria), _list(args.allocations)
    args.distill = [{"off": False, "on": True}.get(x) for x in _list(args.distill)]
    args.extra_targets, args.repeat = _list(args.extra_targets, float), _list(args.repeat)
    args.only_folds = None if args.only_folds is None else _list(args.only_folds, int)
    if args.stop_at is not None and not re.fullmatch(r"([01]?\d|2[0-3]):[0-5]\d", args.stop_at):
        p.error("--stop-at is a UTC time HH:MM")
    if None in args.distill:
        p.error("--distill takes off and/or on")
    if not all(0 < t < 1 for t in [args.target, *args.extra_targets]):
        p.error("targets are fractions of the FLOPs kept, in (0, 1)")
    if not args.criteria or not args.allocations or not args.distill:
        p.error("give at least one criterion, allocation and distill setting")
    if args.only_folds and not all(0 <= f < args.folds for f in args.only_folds):
        p.error(f"--only-folds are indices in 0..{args.folds - 1}")
    for token in args.criteria:  # an unknown name or option fails here, before any training
        name = split_criterion(token)[0]
        get_criterion(name, **criterion_options(token, args.seed))
    for token in args.allocations:
        allocation, widths_from = split_allocation(token)
        if allocation not in ("global", "uniform", "cost", "latency"):
            p.error(f"unknown allocation {token!r}: global, uniform, cost, latency or widths:CRITERION-ALLOCATION")
        if widths_from is not None:
            get_criterion(widths_from)
    if args.car_images < 1:
        p.error("--car-images must be >= 1")
    for flag in ("class_weights", "finetune_class_weights"):
        try:
            weights = parse_class_weights(getattr(args, flag))
        except DetpruneError as err:
            p.error(f"--{flag.replace('_', '-')}: {err}")
        # one canonical spelling, so the same weights give the same cell key
        setattr(args, flag, ",".join(f"{k}={v:g}" for k, v in weights.items()))
    return args
