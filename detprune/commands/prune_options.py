"""The options of ``detprune prune`` and their checks, apart from the stages that use them.

Everything here runs before anything is written: a bad combination of flags is one line and
exit 2, with no output folder touched.
"""

from __future__ import annotations

import argparse

from detprune.commands import prune_schedule
from detprune.commands.shared import add_loading_arguments
from detprune.defaults import DEFAULT_IMGSZ

TARGET_FLAGS = ("target_flops", "target_params", "ratio", "target_latency")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="YAML recipe whose fields are defaults for these flags")
    parser.add_argument("--model", required=True, help="yolov8n.yaml, an ultralytics .pt, ...")
    parser.add_argument("--weights", default=None, help="state-dict file to load into --model (names and shapes that match)")
    add_loading_arguments(parser, weights=True)
    parser.add_argument("--data", default=None, help="dataset (KITTI folder, dataset yaml, ...); only criteria that score on images need it")
    parser.add_argument("--split", default=None, help="which split of --data to score on (where it has several)")
    parser.add_argument("--class-map", default=None, help="class map for a KITTI or COCO --data")
    scoring = parser.add_argument_group("scoring")
    scoring.add_argument("--criterion", default="magnitude", help="magnitude (= l1, default), l2, bn-scale, random, saliency, taylor, snip ...")
    scoring.add_argument("--criterion-option", action="append", default=None, metavar="KEY=VALUE",
                         help="an option of the criterion, e.g. max_channels_per_layer=4 for car (repeatable)")
    scoring.add_argument("--class-weights", default=None, metavar="CLASS=W,...",
                         help="class priorities of a data-driven criterion (and --widths-from's), e.g. "
                              "Pedestrian=3,Cyclist=3 or a YAML mapping file; unlisted classes weigh 1")
    scoring.add_argument("--scores", default=None, help="a scores.pt written by 'detprune score', used instead of --criterion")
    scoring.add_argument("--batch-size", type=int, default=8, help="batch size of data-driven scoring")
    scoring.add_argument("--max-images", type=int, default=None, help="score on a seeded random subset of this many images")
    target = parser.add_argument_group("target (give one)")
    target.add_argument("--target-flops", type=float, default=None, help="fraction of the FLOPs to KEEP, e.g. 0.5")
    target.add_argument("--target-params", type=float, default=None, help="fraction of the parameters to KEEP")
    target.add_argument("--ratio", type=float, default=None, help="fraction of the prunable channels to REMOVE")
    target.add_argument("--target-latency", type=float, default=None,
                        help="fraction of the original latency to KEEP on --backend: the cut a measured latency "
                             "table predicts, verified by timing (see --latency-search)")
    target.add_argument("--backend", choices=("onnxruntime", "torch-cuda", "tensorrt"), default=None,
                        help="where latency is measured, for --target-latency and --cost latency: onnxruntime "
                             "(CPU), torch-cuda (FP16) or tensorrt")
    target.add_argument("--latency-search", choices=("table", "flops"), default="table",
                        help="table (default): choose the cut by a per-layer latency table, verify, refine up to twice; "
                             "flops: bisect on the FLOPs fraction, timing every candidate")
    target.add_argument("--latency-cache", default=None, metavar="DIR",
                        help="where latency tables are kept (default $DETPRUNE_LATENCY_CACHE or ~/.cache/detprune/latency)")
    target.add_argument("--latency-threads", type=int, default=None,
                        help="ONNX Runtime threads for latency tables and timing (default: the cores this process may use)")
    target.add_argument("--table-check", type=int, default=10,
                        help="random cuts a newly built latency table is checked on (default 10; 0 = none)")
    target.add_argument("--latency-tolerance", type=float, default=0.05,
                        help="accepted relative distance of the measured latency ratio from the target (default 0.05)")
    target.add_argument("--search-runs", type=int, default=30, help="timed runs per model and candidate of the latency search")
    limits = parser.add_argument_group("allocation")
    limits.add_argument("--allocation", default=None,
                        help="how many channels each group keeps: global (one ranking), uniform (the same "
                             "fraction of every group) or cost (most importance kept per unit of --cost); "
                             "default: cost for taylor, global for the other criteria (measured best)")
    limits.add_argument("--cost", default=None,
                        help="what --allocation cost spends: flops, params or latency (a latency table measured on "
                             "--backend; HALP) (default: the target's kind)")
    limits.add_argument("--widths-from", default=None, metavar="CRITERION",
                        help="allocate the widths on this criterion's scores; --criterion then picks the channels kept")
    limits.add_argument("--per-layer", action="store_true", default=False, help="the same as --allocation uniform")
    limits.add_argument("--round-to", type=int, default=8, help="kept channels are a multiple of this: 8 (default), 16, 32; 1 = any")
    limits.add_argument("--min-channels", type=int, default=8, help="no group keeps fewer channels (default 8)")
    limits.add_argument("--max-ratio", type=float, default=0.8, help="no group loses more than this fraction (default 0.8)")
    limits.add_argument("--normalisation", choices=("l2", "l1", "max", "mean", "none"), default=None,
                        help="per-layer score normalisation before the allocation (default: l2 for global and "
                             "uniform, which cut wide layers first; none for cost, whose knapsack needs the "
                             "scores' own scale; max/mean spread a global cut)")
    after = parser.add_argument_group("fine-tune and evaluate (with --data)")
    after.add_argument("--finetune-epochs", type=int, default=0, help="fine-tune the pruned model this many epochs (default 0)")
    after.add_argument("--finetune-batch", type=int, default=None, help="fine-tuning batch size (default: the trainer's)")
    after.add_argument("--lr", type=float, default=None, help="fine-tuning learning rate (default: the trainer's)")
    after.add_argument("--distill", action=argparse.BooleanOptionalAction, default=None,
                       help="fine-tune learning from the unpruned model too (knowledge distillation; default off: "
                            "it lost accuracy at short budgets in the k-fold benchmark, docs/benchmarks.md)")
    after.add_argument("--distill-weight", type=float, default=None,
                       help="weight of the distillation loss (default: YOLO ultralytics' dis 6.0, Faster R-CNN 1.0)")
    after.add_argument("--val-fraction", type=float, default=None, help="share of --data held out for evaluation (default 0.2)")
    after.add_argument("--val-count", type=int, default=None, help="number of images held out instead of a share")
    after.add_argument("--val-list", default=None, metavar="FILE",
                       help="frame ids held out for evaluation, one a line (# comments), e.g. KITTI's val.txt")
    after.add_argument("--no-eval", action="store_true", help="skip the before/after evaluation and report")
    after.add_argument("--latency-runs", type=int, default=30, help="timed ONNX Runtime runs per model in the report (0 = none)")
    parser.add_argument("--imgsz", type=int, default=DEFAULT_IMGSZ, help="input size the FLOPs are counted at (and images scored at)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random criterion and of the image subset")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... for scoring and pruning (default: cuda when available)")
    parser.add_argument("--out", default="runs/prune/exp", help="output folder (default runs/prune/exp)")
    parser.add_argument("--exist-ok", action="store_true", help="replace an output folder an earlier 'detprune prune' wrote")
    prune_schedule.add_arguments(parser)
    from detprune.commands.eval import add_eval_arguments

    add_eval_arguments(parser)


def pick_target(args: argparse.Namespace) -> None:
    """A target flag given on the command line replaces the recipe's target of another kind."""
    given = [k for k in TARGET_FLAGS if getattr(args, k) is not None]
    parser = getattr(args, "_parser", None)
    if len(given) > 1 and parser is not None:
        from_flags = [k for k in given if getattr(args, k) != parser.get_default(k)]
        if len(from_flags) == 1:
            for k in given:
                if k != from_flags[0]:
                    setattr(args, k, None)


def validate(args: argparse.Namespace) -> None:
    from detprune.errors import DetpruneError
    from detprune.pruning.targets import make_target

    flags = {"target_flops": "--target-flops", "target_params": "--target-params", "ratio": "--ratio",
             "target_latency": "--target-latency"}
    given = [flags[k] for k in TARGET_FLAGS if getattr(args, k) is not None]
    if len(given) != 1:
        raise DetpruneError("give one target: --target-flops, --target-params, --ratio or --target-latency"
                            + (f" (got {' and '.join(given)})" if given else ""))
    if args.target_latency is not None or args.cost == "latency":
        _validate_latency(args)
    try:
        make_target(ratio=args.ratio, target_flops=args.target_flops, target_params=args.target_params, strict=True)
    except DetpruneError as err:
        for k, flag in flags.items():
            if str(err).startswith(k + " "):
                raise DetpruneError(flag + str(err)[len(k):]) from None
        raise
    _validate_allocation(args)
    if args.class_weights is not None:
        from detprune.criteria.class_weights import parse_class_weights

        if args.scores is not None:
            raise DetpruneError("--class-weights weighs the scoring of --criterion; scores read from --scores are already made")
        parse_class_weights(args.class_weights)  # bad syntax: one line before anything runs
    if args.round_to < 1:
        raise DetpruneError(f"--round-to must be >= 1 (1 = no rounding), got {args.round_to}")
    if args.min_channels < 1:
        raise DetpruneError(f"--min-channels must be >= 1, got {args.min_channels}")
    if not 0 < args.max_ratio < 1:
        raise DetpruneError(f"--max-ratio must lie in (0, 1), got {args.max_ratio}")
    if args.finetune_epochs < 0 or args.latency_runs < 0:
        raise DetpruneError("--finetune-epochs and --latency-runs must be >= 0")
    if args.finetune_epochs > 0 and not args.data:
        raise DetpruneError("--finetune-epochs needs --data to train on")
    if args.imgsz < 32 or args.batch_size < 1 or (args.max_images is not None and args.max_images < 1):
        raise DetpruneError("--imgsz must be >= 32, --batch-size and --max-images >= 1")
    _validate_distillation(args)
    prune_schedule.validate(args)


def _validate_distillation(args: argparse.Namespace) -> None:
    from detprune.errors import DetpruneError
    from detprune.train.distill import check_weight

    try:
        check_weight(args.distill_weight)
    except DetpruneError as err:
        raise DetpruneError(f"--distill-weight: {err}") from None
    if args.distill and args.finetune_epochs <= 0:
        raise DetpruneError("--distill distils while fine-tuning: give --finetune-epochs")
    if args.distill and args.schedule != "one-shot":
        raise DetpruneError(f"--distill applies to --schedule one-shot, not {args.schedule}")
    if args.distill_weight is not None and not distils(args):
        raise DetpruneError("--distill-weight needs distillation: --distill, --finetune-epochs, --schedule one-shot")


def distils(args: argparse.Namespace) -> bool:
    """Distillation is asked for (``--distill``): off by default, the evidence is against it so far.

    On the k-fold KITTI benchmark at 50% FLOPs and 10 fine-tuning epochs, distilling from the
    unpruned model at ultralytics' weight lost 10-14 mAP50 against plain fine-tuning for every
    criterion and allocation measured (docs/benchmarks.md, "Accuracy at the cut").
    """
    return bool(args.distill) and args.finetune_epochs > 0 and args.schedule == "one-shot"


def _validate_allocation(args: argparse.Namespace) -> None:
    from detprune.criteria.base import available_criteria
    from detprune.errors import DetpruneError
    from detprune.pruning.allocation import ALLOCATIONS
    from detprune.pruning.knapsack import COSTS

    if args.allocation is not None and args.allocation not in ALLOCATIONS:
        raise DetpruneError(f"--allocation must be one of {', '.join(ALLOCATIONS)}, got {args.allocation!r}")
    if args.per_layer and args.allocation not in (None, "global", "uniform"):
        raise DetpruneError(f"--per-layer is --allocation uniform; it contradicts --allocation {args.allocation}")
    if args.cost is not None and (args.cost not in COSTS or allocation(args) != "cost"):
        raise DetpruneError(f"--cost is flops, params or latency, with --allocation cost (got --cost {args.cost!r}, "
                            f"--allocation {allocation(args)})")
    if args.widths_from is not None:
        if args.widths_from not in available_criteria():
            raise DetpruneError(f"--widths-from: unknown criterion {args.widths_from!r}; "
                                f"choose from {', '.join(available_criteria())}")
        if args.schedule != "one-shot":
            raise DetpruneError(f"--widths-from applies to --schedule one-shot, not {args.schedule}")


def allocation(args: argparse.Namespace) -> str:
    """The allocation named, or the default of the criterion that allocates the widths."""
    from detprune.pruning.allocation import default_allocation

    if args.per_layer:
        return "uniform"
    if args.allocation is not None:
        return args.allocation
    allocating = args.widths_from or (None if args.scores else args.criterion)
    return default_allocation(allocating)


def allocation_record(args: argparse.Namespace, result=None) -> dict:
    """What chose the widths and the channels: for prune.json and the report."""
    cost = result.settings.get("cost") if result is not None else args.cost
    return {"allocation": allocation(args), "cost": cost, "widths_from": args.widths_from}


def _validate_latency(args: argparse.Namespace) -> None:
    from detprune.errors import DetpruneError
    from detprune.pruning.latency_target import check_backend
    from detprune.pruning.targets import check_fraction

    what = "--target-latency" if args.target_latency is not None else "--cost latency"
    if args.backend is None:
        raise DetpruneError(f"{what} needs --backend: where the latency is measured (onnxruntime, torch-cuda or tensorrt)")
    if args.target_latency is not None:
        check_fraction("--target-latency", args.target_latency)
    if not 0 < args.latency_tolerance < 1 or args.search_runs < 1:
        raise DetpruneError("--latency-tolerance must lie in (0, 1) and --search-runs be >= 1")
    if (args.latency_threads is not None and args.latency_threads < 1) or args.table_check < 0:
        raise DetpruneError("--latency-threads must be >= 1 and --table-check >= 0")
    check_backend(args.backend)
    if uses_table(args) and args.backend == "tensorrt":
        raise DetpruneError("latency tables are measured on onnxruntime or torch-cuda; for tensorrt use "
                            "--latency-search flops (and --cost flops)")


def uses_table(args: argparse.Namespace) -> bool:
    """Whether the run measures (or reads) a latency table: ``--cost latency`` or a table-searched latency target."""
    return args.cost == "latency" or (args.target_latency is not None and args.latency_search == "table")
