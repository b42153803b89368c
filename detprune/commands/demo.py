"""``detprune demo``: the whole workflow end to end on synthetic driving scenes, CPU only, no download."""

from __future__ import annotations

import argparse

HELP = (
    "run the whole workflow on synthetic driving scenes: train a baseline until flat, prune (saliency vs L1), "
    "fine-tune, evaluate against the baseline trained as long, export"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from detprune.workflow.demo import DemoSettings

    d = DemoSettings()
    parser.add_argument("--config", default=None, help="YAML recipe whose fields are defaults for these flags")
    parser.add_argument("--out", default=d.out, help="output folder")
    parser.add_argument(
        "--exist-ok",
        action="store_true",
        help="replace an existing output folder (when the run has finished); its baseline is reused "
        "where it was trained with the same settings",
    )
    parser.add_argument("--retrain", action="store_true", help="train the baseline even where an earlier run's fits")
    parser.add_argument("--model", default=d.model, help="architecture yaml of the baseline")
    parser.add_argument("--num-images", type=int, default=d.num_images, help="synthetic scenes to generate")
    parser.add_argument("--val-images", type=int, default=d.val_images, help="of which held out for evaluation")
    parser.add_argument("--width", type=int, default=d.width)
    parser.add_argument("--height", type=int, default=d.height)
    parser.add_argument("--imgsz", type=int, default=d.imgsz)
    parser.add_argument("--batch", type=int, default=d.batch)
    parser.add_argument(
        "--baseline-epochs",
        type=int,
        default=d.baseline_epochs,
        help="most epochs the baseline trains; it stops earlier once its val curve is flat",
    )
    parser.add_argument(
        "--flat-window",
        type=int,
        default=d.flat_window,
        help="flat: the best val mAP50-95 of this many last epochs ...",
    )
    parser.add_argument(
        "--flat-gain",
        type=float,
        default=d.flat_gain,
        help="... gains less than this fraction over the best before them",
    )
    parser.add_argument(
        "--finetune-epochs",
        type=int,
        default=d.finetune_epochs,
        help="fine-tuning epochs of each pruned model; the same-budget baseline trains as many more",
    )
    parser.add_argument("--target-flops", type=float, default=d.target_flops, help="fraction of FLOPs kept")
    parser.add_argument(
        "--criteria",
        default=",".join(d.criteria),
        help="comma-separated criteria to compare, each 'name' or 'name/allocation' (e.g. taylor/cost)",
    )
    parser.add_argument(
        "--allocation", default=d.allocation, help="allocation of the criteria that name none: global, uniform or cost"
    )
    parser.add_argument(
        "--distill",
        action=argparse.BooleanOptionalAction,
        default=d.distill,
        help="fine-tune distilling from the baseline (default off, as the accuracy benchmark chose)",
    )
    parser.add_argument("--latency-runs", type=int, default=d.latency_runs)
    parser.add_argument("--seed", type=int, default=d.seed)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from detprune.errors import DetpruneError
    from detprune.pruning.policies import allocation_names
    from detprune.workflow.demo import DemoSettings, run_demo, stage_times

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.exist_ok:
        raise DetpruneError(f"{out}: output folder exists; pass --exist-ok to replace it or choose another --out")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "config.yaml").is_file())):
        raise DetpruneError(
            f"{out}: exists and was not written by 'detprune demo' (no config.yaml); refusing to replace it"
        )
    if not 0 < args.target_flops < 1:
        raise DetpruneError(f"--target-flops must be in (0, 1), got {args.target_flops}")
    if not 0 < args.val_images < args.num_images:
        raise DetpruneError(f"--val-images must be between 1 and --num-images - 1, got {args.val_images}")
    if args.baseline_epochs < 1 or args.finetune_epochs < 1 or args.flat_window < 1 or args.flat_gain < 0:
        raise DetpruneError("--baseline-epochs, --finetune-epochs and --flat-window must be >= 1, --flat-gain >= 0")
    criteria = tuple(c.strip() for c in args.criteria.split(",") if c.strip())
    for allocation in [args.allocation] + [c.partition("/")[2] for c in criteria if "/" in c]:
        if allocation not in allocation_names():
            raise DetpruneError(f"--allocation must be one of {', '.join(allocation_names())}, got {allocation!r}")
    settings = DemoSettings(
        out=str(out),
        model=args.model,
        num_images=args.num_images,
        val_images=args.val_images,
        width=args.width,
        height=args.height,
        imgsz=args.imgsz,
        batch=args.batch,
        baseline_epochs=args.baseline_epochs,
        flat_window=args.flat_window,
        flat_gain=args.flat_gain,
        finetune_epochs=args.finetune_epochs,
        target_flops=args.target_flops,
        criteria=criteria,
        allocation=args.allocation,
        distill=args.distill,
        latency_runs=args.latency_runs,
        seed=args.seed,
    )
    report = run_demo(settings, reuse_baseline=not args.retrain)
    run = report.run_info
    print()
    print(report.to_table())
    allocations = ", ".join(f"{v} for {k}" for k, v in run["pruning"]["allocation"].items())
    print(
        f"\npruning: allocation {allocations}; distillation {run['pruning']['distillation']}; "
        f"baseline: {run['baseline_training']['epochs']} epochs "
        f"({'flat' if run['baseline_training']['flattened'] else 'cap reached, not yet flat'})"
    )
    print(run["reading"])
    print(stage_times(run["seconds"], run["load_average"]["start"], run["load_average"]["end"]))
    print(f"\nreport: {out / 'report.md'}  (JSON: {out / 'report.json'}; plots: {out}/*.png)")
    return 0
