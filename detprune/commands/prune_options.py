"""The flags of ``detprune prune``: one per field of :class:`detprune.workflow.config.PruneConfig`.

Their defaults are the config's (set at the end of :func:`add_arguments`), their checks the
config's (:mod:`detprune.workflow.checks`): nothing about a run is decided here.
"""

from __future__ import annotations

import argparse

from detprune.commands.export import parse_imgsz
from detprune.commands.shared import add_loading_arguments
from detprune.defaults import DATA_CRITERION, DATA_FREE_CRITERION, DEFAULT_IMGSZ
from detprune.runtime import names as latency_backends


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="YAML recipe whose fields are defaults for these flags")
    parser.add_argument("--model", required=True, help="yolov8n.yaml, an ultralytics .pt, ...")
    parser.add_argument(
        "--weights", default=None, help="state-dict file to load into --model (names and shapes that match)"
    )
    add_loading_arguments(parser, weights=True)
    parser.add_argument(
        "--data",
        default=None,
        help="dataset (KITTI folder, dataset yaml, ...): images to score on, and with evaluation or "
        "fine-tuning split into train / val (see --val-data)",
    )
    parser.add_argument(
        "--val-data",
        default=None,
        metavar="DATA",
        help="a separate evaluation set (folder or yaml): --data is then trained and scored on whole",
    )
    parser.add_argument(
        "--train-list",
        default=None,
        metavar="FILE",
        help="frame ids of --data to train and score on, one a line (# comments); the others (or "
        "--val-list's, or --val-data) are evaluated on",
    )
    parser.add_argument("--split", default=None, help="which split of --data to score on (where it has several)")
    parser.add_argument("--class-map", default=None, help="class map for a KITTI or COCO --data")
    scoring = parser.add_argument_group("scoring")
    scoring.add_argument(
        "--criterion",
        default=None,
        help=f"taylor, saliency, snip, catro, car (score on --data), magnitude (= l1), l2, bn-scale, random; "
        f"default {DATA_CRITERION} with --data (best measured), {DATA_FREE_CRITERION} without",
    )
    scoring.add_argument(
        "--criterion-option",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="an option of the criterion, e.g. max_channels_per_layer=4 for car (repeatable)",
    )
    scoring.add_argument(
        "--class-weights",
        default=None,
        metavar="CLASS=W,...",
        help="class priorities of a data-driven criterion (and --widths-from's), e.g. "
        "Pedestrian=3,Cyclist=3 or a YAML mapping file; unlisted classes weigh 1",
    )
    scoring.add_argument(
        "--scores", default=None, help="a scores.pt written by 'detprune score', used instead of --criterion"
    )
    scoring.add_argument("--batch-size", type=int, default=8, help="batch size of data-driven scoring")
    scoring.add_argument(
        "--max-images", type=int, default=None, help="score on a seeded random subset of this many images"
    )
    target = parser.add_argument_group("target (give one)")
    target.add_argument("--target-flops", type=float, default=None, help="fraction of the FLOPs to KEEP, e.g. 0.5")
    target.add_argument("--target-params", type=float, default=None, help="fraction of the parameters to KEEP")
    target.add_argument("--ratio", type=float, default=None, help="fraction of the prunable channels to REMOVE")
    target.add_argument(
        "--target-latency",
        type=float,
        default=None,
        help="fraction of the original latency to KEEP on --backend: the cut a measured latency "
        "table predicts, verified by timing (see --latency-search)",
    )
    target.add_argument(
        "--backend",
        choices=latency_backends(),
        default=None,
        help="where latency is measured, for --target-latency and --cost latency: onnxruntime "
        "(CPU), torch-cuda (FP16) or tensorrt",
    )
    target.add_argument(
        "--latency-search",
        choices=("table", "flops"),
        default="table",
        help="table (default): choose the cut by a per-layer latency table, verify, refine up to twice; "
        "flops: bisect on the FLOPs fraction, timing every candidate",
    )
    target.add_argument(
        "--latency-cache",
        default=None,
        metavar="DIR",
        help="where latency tables are kept (default $DETPRUNE_LATENCY_CACHE or ~/.cache/detprune/latency)",
    )
    target.add_argument(
        "--latency-threads",
        type=int,
        default=None,
        help="ONNX Runtime threads for latency tables and timing (default: the cores this process may use)",
    )
    target.add_argument(
        "--table-check",
        type=int,
        default=10,
        help="random cuts a newly built latency table is checked on (default 10; 0 = none)",
    )
    target.add_argument(
        "--latency-tolerance",
        type=float,
        default=0.05,
        help="accepted relative distance of the measured latency ratio from the target (default 0.05)",
    )
    target.add_argument(
        "--search-runs", type=int, default=30, help="timed runs per model and candidate of the latency search"
    )
    limits = parser.add_argument_group("allocation")
    limits.add_argument(
        "--allocation",
        default=None,
        help="how many channels each group keeps: global (one ranking), uniform (the same "
        "fraction of every group) or cost (most importance kept per unit of --cost); "
        "default: cost for taylor and saliency, global for the other criteria (measured best)",
    )
    limits.add_argument(
        "--cost",
        default=None,
        help="what --allocation cost spends: flops, params or latency (a latency table measured on "
        "--backend; HALP) (default: the target's kind)",
    )
    limits.add_argument(
        "--widths-from",
        default=None,
        metavar="CRITERION",
        help="allocate the widths on this criterion's scores; --criterion then picks the channels kept",
    )
    limits.add_argument("--per-layer", action="store_true", default=False, help="the same as --allocation uniform")
    limits.add_argument(
        "--round-to", type=int, default=8, help="kept channels are a multiple of this: 8 (default), 16, 32; 1 = any"
    )
    limits.add_argument("--min-channels", type=int, default=8, help="no group keeps fewer channels (default 8)")
    limits.add_argument(
        "--max-ratio", type=float, default=0.8, help="no group loses more than this fraction (default 0.8)"
    )
    limits.add_argument(
        "--normalisation",
        choices=("l2", "l1", "max", "mean", "none"),
        default=None,
        help="per-layer score normalisation before the allocation (default: l2 for global and "
        "uniform, which cut wide layers first; none for cost, whose knapsack needs the "
        "scores' own scale; max/mean spread a global cut)",
    )
    after = parser.add_argument_group("fine-tune and evaluate (with --data)")
    after.add_argument(
        "--finetune-epochs", type=int, default=0, help="fine-tune the pruned model this many epochs (default 0)"
    )
    after.add_argument(
        "--finetune-batch", type=int, default=None, help="fine-tuning batch size (default: the trainer's)"
    )
    after.add_argument("--lr", type=float, default=None, help="fine-tuning learning rate (default: the trainer's)")
    after.add_argument(
        "--distill",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="fine-tune learning from the unpruned model too (knowledge distillation; default off: "
        "+1.1 mAP50 at weight 2 on 2,000 KITTI frames, not established, for ~1/3 more time; docs/benchmarks.md)",
    )
    after.add_argument(
        "--distill-weight",
        type=float,
        default=None,
        help="weight of the distillation loss (default: YOLO 2.0, chosen on the KITTI benchmark's "
        "tuning split; Faster R-CNN 1.0)",
    )
    after.add_argument(
        "--val-fraction", type=float, default=None, help="share of --data held out for evaluation (default 0.2)"
    )
    after.add_argument("--val-count", type=int, default=None, help="number of images held out instead of a share")
    after.add_argument(
        "--val-list",
        default=None,
        metavar="FILE",
        help="frame ids held out for evaluation, one a line (# comments), e.g. KITTI's val.txt",
    )
    after.add_argument(
        "--trainer-arg",
        dest="trainer_args",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="any other trainer argument of the fine-tuning, e.g. rect=True or warmup_epochs=1 (repeatable)",
    )
    after.add_argument("--no-eval", action="store_true", help="skip the before/after evaluation and report")
    after.add_argument(
        "--latency-runs", type=int, default=30, help="timed ONNX Runtime runs per model in the report (0 = none)"
    )
    parser.add_argument(
        "--imgsz",
        type=parse_imgsz,
        default=DEFAULT_IMGSZ,
        help=f"input size, 640 or H,W (e.g. 224,640): images are scored and evaluated, FLOPs counted "
        f"and the model fine-tuned at it (default: the model's training size, else {DEFAULT_IMGSZ}); "
        "--letterbox as eval's",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random criterion and of the image subset")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads of this run (default: torch's, the cores this process may use)",
    )
    parser.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 ... for scoring and pruning (default: cuda when available)"
    )
    parser.add_argument("--out", default="runs/prune/exp", help="output folder (default runs/prune/exp)")
    parser.add_argument(
        "--exist-ok", action="store_true", help="replace an output folder an earlier 'detprune prune' wrote"
    )
    _add_schedule_arguments(parser)
    from detprune.commands.eval import add_eval_arguments

    add_eval_arguments(parser)
    from detprune.workflow.config import PruneConfig

    defaults = PruneConfig()  # one place for the defaults: the config's
    dests = {a.dest for a in parser._actions}
    parser.set_defaults(**{n: getattr(defaults, n) for n in PruneConfig.names() if n in dests})


def _add_schedule_arguments(parser: argparse.ArgumentParser) -> None:
    from detprune.workflow.config import DEFAULT_MEGABATCHES, DEFAULT_STEPS, SCHEDULES

    group = parser.add_argument_group("schedule (iterative / progressive need --data and --target-flops)")
    group.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default="one-shot",
        help="one-shot (default): cut once; iterative: --steps cuts with training between; "
        "progressive: Anytime Progressive Pruning over --megabatches",
    )
    group.add_argument(
        "--megabatches",
        type=int,
        default=None,
        help=f"progressive: megabatches the training split arrives in (>= 2, default {DEFAULT_MEGABATCHES})",
    )
    group.add_argument(
        "--steps", type=int, default=None, help=f"iterative: number of cuts (>= 2, default {DEFAULT_STEPS})"
    )
    group.add_argument(
        "--sparsity-schedule",
        choices=("linear", "cubic", "geometric"),
        default=None,
        help="FLOPs kept after each step: linear (default), cubic (Zhu & Gupta) or geometric (APP's 0.8^s)",
    )
    group.add_argument(
        "--replay",
        type=float,
        default=None,
        help="progressive: fraction of the earlier megabatches trained on again at each step (default 1.0)",
    )
    group.add_argument(
        "--epochs-per-step",
        type=int,
        default=None,
        help="training epochs after every cut (default --finetune-epochs, or 1)",
    )
