"""``detprune search``: train a width supernet, search the widths under a budget, cut and fine-tune.

After PSE-Net (Wang et al., arXiv:2408.16233): every prunable group of the model may run at a
few widths (prefixes of the criterion's channel order); the model's own weights are trained as
a supernet with several subnets per step (one per batch slice, channel masks per sample), a
width prior learned meanwhile spreads the sampled subnets over the FLOPs range, and an
evolutionary search, with the masked supernet's validation mAP50 as the fitness, picks the
widths within ``--target-flops`` (or a measured ``--target-latency``). The pruner then cuts the
trained weights to those widths and the result is fine-tuned. See docs/search.md.

Files in ``--out``: ``pruned.pt`` (the pruned model), ``search.json`` (widths per group, the
chosen subnet's estimate and cost, every candidate scored, the prior, timings, settings),
``search.png`` (candidates' estimate vs FLOPs, the budget, the chosen one; the FLOPs
histogram of the sampled subnets) and, unless ``--no-eval``, ``report.json`` / ``report.md``
comparing the model before and after, with plots.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from detprune.commands.outputs import check_output_folder
from detprune.commands.shared import add_loading_arguments, compact_json, read_class_map
from detprune.commands.export import parse_imgsz
from detprune.defaults import DATA_CRITERION, DEFAULT_IMGSZ
from detprune.runtime import names as latency_backends

HELP = "search per-group widths with a supernet (PSE-Net) under a FLOPs or latency budget, cut and fine-tune"
MARKER = "pruned.pt"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="yolov8n.yaml, an ultralytics .pt, ...")
    parser.add_argument("--weights", default=None, help="state-dict file to load into --model")
    add_loading_arguments(parser, weights=True)
    parser.add_argument(
        "--data", required=True, help="dataset (KITTI folder, dataset yaml, ...) to train and validate on"
    )
    parser.add_argument("--class-map", default=None, help="class map for a KITTI or COCO --data")
    budget = parser.add_argument_group("budget (give one)")
    budget.add_argument("--target-flops", type=float, default=None, help="fraction of the FLOPs to KEEP, e.g. 0.5")
    budget.add_argument(
        "--target-latency",
        type=float,
        default=None,
        help="fraction of the original latency to KEEP, measured on --backend",
    )
    budget.add_argument(
        "--backend",
        choices=latency_backends(),
        default="onnxruntime",
        help="where --target-latency is measured (default onnxruntime on the CPU)",
    )
    budget.add_argument(
        "--search-runs", type=int, default=20, help="timed runs per model and candidate with --target-latency"
    )
    space = parser.add_argument_group("width space and supernet")
    space.add_argument(
        "--criterion",
        default=None,
        help=f"criterion ordering each group's channels (default {DATA_CRITERION}, as prune's with --data)",
    )
    space.add_argument(
        "--width-choices", type=int, default=8, help="widths per group, evenly spread over the allowed ones (default 8)"
    )
    space.add_argument("--round-to", type=int, default=8, help="widths are multiples of this (default 8)")
    space.add_argument("--supernet-epochs", type=int, default=10, help="supernet training epochs (default 10)")
    space.add_argument(
        "--subnets-per-step", type=int, default=4, help="subnets trained per step, one per batch slice (default 4)"
    )
    search = parser.add_argument_group("evolutionary search")
    search.add_argument("--population", type=int, default=16, help="candidates per generation (default 16)")
    search.add_argument("--generations", type=int, default=6, help="generations (default 6)")
    after = parser.add_argument_group("fine-tune and evaluate")
    after.add_argument(
        "--finetune-epochs", type=int, default=0, help="fine-tune the cut model this many epochs (default 0)"
    )
    after.add_argument(
        "--val-count", type=int, default=None, help="images held out for the estimator and the report (default 20%%)"
    )
    after.add_argument(
        "--val-list",
        default=None,
        metavar="FILE",
        help="frame ids held out for the estimator and the report instead, one a line (# comments)",
    )
    after.add_argument("--no-eval", action="store_true", help="skip the before/after report")
    after.add_argument(
        "--latency-runs", type=int, default=30, help="timed ONNX Runtime runs per model in the report (0 = none)"
    )
    parser.add_argument(
        "--imgsz",
        type=parse_imgsz,
        default=None,
        help=f"input size, 640 or H,W (training, estimating, FLOPs; default: the model's training size, "
        f"else {DEFAULT_IMGSZ})",
    )
    parser.add_argument(
        "--batch-size", type=int, default=8, help="batch size of scoring, supernet training and fine-tuning"
    )
    parser.add_argument(
        "--lr", type=float, default=0.01, help="SGD learning rate of the supernet and the fine-tuning (default 0.01)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the split, the sampling, the search and the fine-tuning"
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--out", default="runs/search/exp", help="output folder (default runs/search/exp)")
    parser.add_argument(
        "--exist-ok", action="store_true", help="replace an output folder an earlier 'detprune search' wrote"
    )


def _validate(args: argparse.Namespace) -> None:
    from detprune.errors import DetpruneError
    from detprune.pruning.targets import check_fraction

    if (args.target_flops is None) == (args.target_latency is None):
        raise DetpruneError("give one budget: --target-flops or --target-latency")
    if args.target_flops is not None:
        check_fraction("--target-flops", args.target_flops)
    else:
        from detprune.pruning.latency_target import check_backend

        check_fraction("--target-latency", args.target_latency)
        check_backend(args.backend)
    checks = {
        "--width-choices must be >= 2": args.width_choices >= 2,
        "--round-to must be >= 1": args.round_to >= 1,
        "--supernet-epochs must be >= 1": args.supernet_epochs >= 1,
        "--subnets-per-step must be >= 2 (the largest and the smallest subnet ride in every step)": (
            args.subnets_per_step >= 2
        ),
        "--population must be >= 2 and --generations >= 1": args.population >= 2 and args.generations >= 1,
        "--finetune-epochs and --latency-runs must be >= 0": args.finetune_epochs >= 0 and args.latency_runs >= 0,
        "--batch-size must be >= 1": args.batch_size >= 1,
        "--lr must be > 0": args.lr > 0,
        "--search-runs must be >= 1": args.search_runs >= 1,
        "--val-count must be >= 1": args.val_count is None or args.val_count >= 1,
    }
    for message, ok in checks.items():
        if not ok:
            raise DetpruneError(message)


def run(args: argparse.Namespace) -> int:
    from detprune.utils.atomic import atomic_dir

    _validate(args)
    out = Path(args.out)
    check_output_folder(out, args.exist_ok, MARKER, "detprune search")
    with atomic_dir(out) as folder:
        record = _search(args, folder)
    _print_summary(record, out)
    return 0


def _search(args: argparse.Namespace, folder: Path) -> dict:
    import numpy as np

    from detprune.adapters import get_adapter
    from detprune.commands.shared import resolve_device
    from detprune.criteria.base import build_criterion
    from detprune.data.batch import iter_batches
    from detprune.data.loader import load_train_val
    from detprune.errors import BadInputError
    from detprune.pruning.allocation import Limits
    from detprune.pruning.prior import WidthPrior
    from detprune.pruning.search import FlopsBudget, LatencyBudget, cut, evolve
    from detprune.pruning.search_plots import plot_search
    from detprune.pruning.supernet import ChannelMasks, WidthSpace
    from detprune.pruning.supernet_train import SupernetEstimator, train_supernet
    from detprune.utils.progress import progress_bar
    from detprune.workflow.config import default_criterion
    from detprune.workflow.imgsz import resolve_imgsz
    from detprune.workflow.stages import finetune_variant

    seconds: dict[str, float] = {}
    device = resolve_device(args.device)
    class_map = read_class_map(args.class_map)
    train, val = load_train_val(
        args.data,
        class_map=class_map,
        val_count=args.val_count,
        seed=args.seed,
        val_list=getattr(args, "val_list", None),
    )
    if len(train) == 0 or len(val) == 0:
        raise BadInputError(f"{args.data}: need images for both the training and the validation split")
    adapter = get_adapter(args.model)
    model = adapter.load(args.model, weights=args.weights, class_names=train.class_names)
    args.imgsz = resolve_imgsz(args.imgsz, model)
    args.criterion = args.criterion or default_criterion(True)
    model = adapter.prepare_for_pruning(model).to(device)
    before = _summary(args, adapter, model, val, folder, "original") if not args.no_eval else None

    tick = time.perf_counter()
    criterion = build_criterion(args.criterion, {}, {"seed": args.seed, "progress": True})
    batches = iter_batches(train, args.imgsz, args.batch_size) if criterion.needs_data else iter(())
    scores = criterion.score(
        adapter, model, progress_bar(batches, total=-(-len(train) // args.batch_size), desc="score")
    )
    seconds["score"] = time.perf_counter() - tick

    space = WidthSpace(
        adapter,
        model,
        scores,
        imgsz=args.imgsz,
        width_choices=args.width_choices,
        limits=Limits(round_to=args.round_to),
    )
    masks, prior = ChannelMasks(space), WidthPrior(space)
    training = train_supernet(
        adapter,
        model,
        masks,
        prior,
        train,
        epochs=args.supernet_epochs,
        imgsz=args.imgsz,
        batch_size=args.batch_size,
        lr=args.lr,
        subnets_per_step=args.subnets_per_step,
        seed=args.seed,
    )
    seconds["supernet"] = training.seconds

    estimator = SupernetEstimator(adapter, model, masks, val, imgsz=args.imgsz, batch_size=args.batch_size)
    rng = np.random.default_rng(args.seed)
    if args.target_flops is not None:
        budget = FlopsBudget(space, args.target_flops)
    else:
        budget = LatencyBudget(adapter, model, space, args.target_latency, backend=args.backend, runs=args.search_runs)
        budget.calibrate(prior, rng)
    try:
        evolution = evolve(
            space, prior, estimator, budget, population=args.population, generations=args.generations, seed=args.seed
        )
    finally:
        if isinstance(budget, LatencyBudget):
            budget.close()
    seconds["search"] = evolution.seconds
    seconds["estimator"] = estimator.seconds

    full = estimator(space.largest())  # the supernet at full width, for reference in search.json
    result = cut(adapter, model, space, evolution.best)
    if args.finetune_epochs > 0:
        tick = time.perf_counter()
        model = finetune_variant(
            adapter,
            result.model,
            train,
            val,
            epochs=args.finetune_epochs,
            out_dir=folder,
            imgsz=args.imgsz,
            batch=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            device="cpu" if device.type == "cpu" else str(device.index or 0),
        )
        seconds["finetune"] = time.perf_counter() - tick
    else:
        model = result.model

    chosen = next(h for h in evolution.history if tuple(h["subnet"]) == evolution.best)
    record = {
        "model": str(args.model),
        "data": str(args.data),
        "criterion": args.criterion,
        "budget": {
            "kind": budget.kind,
            "target": budget.target,
            "window_flops": list(budget.window),
            "measured": evolution.budget_value,
        },
        "widths": space.widths(evolution.best),
        "group_sizes": {c.root: c.size for c in space.choices},
        "subnet": list(evolution.best),
        "estimate": {"mAP50": evolution.fitness, "full_width_mAP50": full, "on": f"{len(val)} validation images"},
        "flops_kept": result.achieved["flops"],
        "params_kept": result.achieved["params"],
        "cost": {"before": result.before.as_dict(), "after": result.after.as_dict()},
        "supernet": training.as_dict(),
        "prior": {
            "bins": prior.bins,
            "flops_range": [prior.low, prior.high],
            "probabilities": {c.root: p.round(4).tolist() for c, p in zip(space.choices, prior.probabilities())},
            "sampled_histogram": prior.histogram(training.sampled_flops).tolist(),
        },
        "history": evolution.history,
        "seconds": seconds,
        "settings": {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "exist_ok"},
    }
    plot_search(
        evolution.history,
        chosen,
        budget.window,
        training.sampled_flops,
        folder / "search.png",
        budget=budget.kind,
        flops_range=(prior.low, prior.high),
        bins=prior.bins,
    )
    model = model.cpu()
    if before is not None:
        record["report"] = _report(args, adapter, model, val, folder, before, record)
    adapter.save(model, folder / MARKER, meta={"search": {k: record[k] for k in ("budget", "widths", "flops_kept")}})
    (folder / "search.json").write_text(compact_json(record))
    return record


def _summary(args, adapter, net, val, folder: Path, name: str, **info):
    from detprune.workflow.measure import summarise

    return summarise(
        adapter,
        net,
        val,
        imgsz=args.imgsz,
        batch_size=args.batch_size,
        latency_runs=args.latency_runs,
        onnx_path=folder / f"{name}.onnx",
        info=info,
    )


def _report(args, adapter, model, val, folder: Path, before, record: dict) -> dict:
    from detprune.evaluation.plots import save_report
    from detprune.evaluation.report import Report

    target = f"{record['budget']['kind']} <= {record['budget']['target']:g}"
    after = _summary(
        args,
        adapter,
        model,
        val,
        folder,
        "pruned",
        model=MARKER,
        criterion=args.criterion,
        target=target,
        finetune_epochs=args.finetune_epochs,
    )
    report = Report.from_pair(
        before,
        after,
        run_info={
            "model": str(args.model),
            "data": str(args.data),
            "method": "supernet width search (PSE-Net)",
            "criterion": args.criterion,
            "target": target,
            "achieved": {"flops": record["flops_kept"]},
            "round_to": args.round_to,
            "finetune_epochs": args.finetune_epochs,
        },
    )
    save_report(
        report,
        folder,
        figures={"search.png": "Searched widths: estimated accuracy against FLOPs, the budget, the chosen one"},
    )
    return {"files": ["report.json", "report.md"], "table": report.to_table()}


def _print_summary(record: dict, out: Path) -> None:
    from detprune.pruning.flops import format_count

    cost = record["cost"]
    budget = record["budget"]
    print(
        f"searched {len(record['history'])} candidates; chosen estimate mAP50 {100 * record['estimate']['mAP50']:.1f} "
        f"(full width {100 * record['estimate']['full_width_mAP50']:.1f})"
    )
    print(f"budget: {budget['kind']} <= {budget['target']:g}; measured {budget['measured']:.3f}")
    print(
        f"params  {format_count(cost['before']['params']):>8} -> {format_count(cost['after']['params']):>8}  "
        f"({record['params_kept']:.1%} kept)"
    )
    print(
        f"FLOPs   {format_count(cost['before']['flops']):>8} -> {format_count(cost['after']['flops']):>8}  "
        f"({record['flops_kept']:.1%} kept)"
    )
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in record["seconds"].items()))
    if "report" in record:
        print()
        print(record["report"]["table"])
    print(f"wrote {out / MARKER}, search.json, search.png{', report.json/.md' if 'report' in record else ''} in {out}")
