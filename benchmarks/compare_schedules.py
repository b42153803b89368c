"""Pruning schedules compared on real KITTI frames at the same final FLOPs and the same training budget.

The question (issue 9): does Anytime Progressive Pruning (APP; Misra et al., arXiv 2204.01640)
beat cutting once or in equal steps, when all three end at the same FLOPs and train on the same
number of images? And does it narrow the generalisation gap (train mAP50 - val mAP50)?

1. split the KITTI folder as ``compare_criteria.py`` does and take its cached, trained YOLOv5n
   baseline (read through ``harness.holdout``; the cache key hashes the baseline's settings, so the
   same ``--imgsz --baseline-epochs --batch --lr`` hit it; a miss is reported and, without
   ``--allow-baseline-training``, an error);
2. for every method x criterion x seed, from a copy of the baseline:
   - ``app``: the 60 training frames arrive in ``--megabatches`` seeded megabatches; at step
     ``t`` score on the frames seen so far, cut to the ``t``-th point of the ``--sparsity-schedule``
     and train ``--app-epochs`` on megabatch ``t`` plus ``--replay`` of the earlier ones;
   - ``one-shot``: score on all frames, cut to the target, train;
   - ``iterative``: ``--iterative-steps`` equal cuts, training on all frames between them;
   one-shot and iterative get the epochs that spend APP's image-passes exactly (sum over steps
   of frames trained on x epochs; 2 x (15 + 30 + 45 + 60) = 300 by default: one-shot 5 epochs,
   iterative 5 x 1 epoch);
3. after every step: FLOPs kept, val mAP50 / mAP50-95 / AP_small, train mAP50 on a seeded
   sample of the seen frames, the gap; at the end also KITTI moderate AP_R40;
4. tabulate mean ± std over seeds, APP's curve per megabatch; write ``results.json`` and
   ``results.md``. Each finished run is kept in ``<out>/runs/<method>/<criterion>/seed<s>/result.json``
   and reused on a rerun with the same settings.

    flock /tmp/detprune_cpu.lock .venv/bin/python benchmarks/compare_schedules.py
    flock /tmp/detprune_cpu.lock .venv/bin/python benchmarks/compare_schedules.py --seeds 0,1 --app-criteria saliency
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package

from detprune.adapters.yolo import YoloAdapter  # noqa: E402
from detprune.criteria import get_criterion  # noqa: E402
from detprune.data.loader import load_train_val  # noqa: E402
from detprune.errors import DetpruneError  # noqa: E402
from detprune.pruning.schedules import (  # noqa: E402
    epochs_for_budget,
    image_passes,
    iterative_steps,
    one_shot_steps,
    progressive_steps,
)
from detprune.utils.atomic import write_text  # noqa: E402
from detprune.workflow.progressive import plot_history, run_schedule  # noqa: E402
from detprune.workflow.stages import seeded_subset  # noqa: E402
from harness import holdout  # noqa: E402  (compare_criteria's baseline, measurement and trainer settings)
from harness.baseline import CHECKPOINT, baseline_folder  # noqa: E402
from harness.cache import cached_result, store_result  # noqa: E402
from harness.log import timed_log  # noqa: E402
from harness.paths import SHARED  # noqa: E402

METHODS = ("app", "one-shot", "iterative")
METRICS = holdout.METRICS  # mAP50, mAP50-95, AP_small, KITTI mod (points)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(SHARED / "data" / "kitti_tiny"), help="KITTI folder")
    p.add_argument("--model", default="yolov5n.yaml")
    p.add_argument("--weights", default=str(SHARED / "weights" / "yolov5n_coco_backbone_neck.pt"))
    p.add_argument("--val-count", type=int, default=15)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--batch", type=int, default=8, help="training, scoring and evaluation batch size")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--baseline-epochs", type=int, default=30, help="of the cached baseline (part of its cache key)")
    p.add_argument("--baseline-cache", default="runs/compare_criteria", help="compare_criteria.py's --out (its cache/)")
    p.add_argument("--allow-baseline-training", action="store_true", help="train the baseline when the cache misses")
    p.add_argument("--target", type=float, default=0.5, help="final fraction of the FLOPs kept")
    p.add_argument("--round-to", type=int, default=8)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--criteria", default="snip", help="criteria of every method, comma-separated")
    p.add_argument("--app-criteria", default="", help="further criteria for APP only (e.g. saliency)")
    p.add_argument("--megabatches", type=int, default=4)
    p.add_argument("--app-epochs", type=int, default=2, help="epochs per megabatch")
    p.add_argument("--replay", type=float, default=1.0)
    p.add_argument("--iterative-steps", type=int, default=5)
    p.add_argument("--sparsity-schedule", default="linear", choices=("linear", "cubic", "geometric"))
    p.add_argument("--train-eval-images", type=int, default=32, help="seen frames the train mAP is measured on")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--latency-runs", type=int, default=0, help="timed ONNX Runtime runs of the final model (0 = none)")
    p.add_argument(
        "--select-best",
        action="store_true",
        help="keep each training run's best epoch by val fitness (default: its last epoch, no selection on val)",
    )
    p.add_argument("--car-max-channels", type=int, default=2, help="(criterion option shared with compare_criteria)")
    p.add_argument("--out", default="runs/compare_schedules")
    args = p.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.criteria = [c.strip() for c in args.criteria.split(",") if c.strip()]
    args.app_criteria = [c.strip() for c in args.app_criteria.split(",") if c.strip()]
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if unknown := sorted(set(args.methods) - set(METHODS)):
        p.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    for name in args.criteria + args.app_criteria:
        get_criterion(name)
    return args


def cached_baseline(args, adapter, train, val, log):
    """compare_criteria's baseline; a cache miss is said out loud (training takes ~10 min)."""
    # the same settings (and so the same folder) as the baseline compare_criteria trains, init_seed included
    settings = holdout.baseline_settings(args)
    folder = baseline_folder(args.baseline_cache, settings)
    if not (folder / CHECKPOINT).is_file():
        log(f"baseline: NOT cached at {folder} (settings {json.dumps(settings)})")
        if not args.allow_baseline_training:
            raise DetpruneError(f"no cached baseline at {folder}; pass --allow-baseline-training to train one")
    cache_args = argparse.Namespace(**{**vars(args), "out": args.baseline_cache})
    return holdout.baseline(cache_args, adapter, train, val, log)


def train_options(args, seed: int) -> dict:
    """compare_criteria's trainer settings; with ``val_every_epoch=False`` the trainer validates only after its
    last epoch, so every step hands on its last epoch: no method picks epochs on the val frames
    (one-shot would pick among 5, APP among 2 per step, iterative among 1)."""
    return {**holdout.train_options(args, seed), **({} if args.select_best else {"val_every_epoch": False})}


def build_steps(args, method: str, train, seed: int):
    """The method's steps; one-shot and iterative get APP's image-passes."""
    app = progressive_steps(train, args.megabatches, args.target, kind=args.sparsity_schedule, replay=args.replay,
                            epochs=args.app_epochs, seed=seed)
    budget = image_passes(app)
    if method == "app":
        return app, budget
    if method == "one-shot":
        return one_shot_steps(train, args.target, epochs=epochs_for_budget(budget, [len(train)]), seed=seed), budget
    epochs = epochs_for_budget(budget, [len(train)] * args.iterative_steps)
    return iterative_steps(
        train, args.iterative_steps, args.target, kind=args.sparsity_schedule, epochs=epochs, seed=seed
    ), budget


def one_run(args, adapter, base_model, base_key: str, train, val, method: str, criterion: str, seed: int, log) -> dict:
    steps, budget = build_steps(args, method, train, seed)
    settings = {"baseline": base_key, "method": method, "criterion": criterion, "seed": seed, "target": args.target,
                "round_to": args.round_to, "plan": [s.describe() for s in steps], "image_passes": image_passes(steps),
                "sparsity_schedule": args.sparsity_schedule, "replay": args.replay,
                "train_eval_images": args.train_eval_images, "latency_runs": args.latency_runs,
                **train_options(args, seed)}
    folder = Path(args.out) / "runs" / method / criterion / f"seed{seed}"
    cached = cached_result(folder, settings)
    if cached is not None:
        return cached
    if image_passes(steps) != budget:
        raise DetpruneError(f"{method}: {image_passes(steps)} image-passes, APP's budget is {budget}")
    tick = time.perf_counter()
    scorer = get_criterion(criterion, **holdout.criterion_options(criterion, seed, args))
    result = run_schedule(adapter, copy.deepcopy(base_model), steps, val, criterion=scorer, out_dir=folder,
                          imgsz=args.imgsz, batch_size=args.batch, train_options=train_options(args, seed),
                          prune_options={"round_to": args.round_to}, train_eval_images=args.train_eval_images,
                          seed=seed, progress=False, log=lambda m: log(f"  {method} {criterion} seed {seed}: {m}"))
    final = holdout.measure(args, adapter, result.model, val)
    last = result.history[-1]
    plot_history(result.history, folder / "schedule.png", title=f"{method}, {criterion}, seed {seed}")
    row = {"settings": settings, "flops_kept": last.flops_kept, **final,
           "train_mAP50": _pts(last.train_mAP50), "gap": _pts(last.gap),
           "history": [r.as_dict() for r in result.history],
           "seconds": {"schedule": result.seconds, "total": time.perf_counter() - tick}}
    return store_result(folder, row)


def _pts(value: float | None) -> float | None:
    return None if value is None else 100.0 * value


def mean_std(values: list[float]) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def summarise(runs: list[dict]) -> dict:
    columns = [c for c, _ in METRICS] + ["flops_kept", "params", "flops", "train_mAP50", "gap", "latency_ms"]
    out: dict[str, Any] = {"seeds": len(runs)}
    for column in columns:
        out[column] = mean_std([r.get(column) for r in runs])
    out["wall_s"] = mean_std([r["seconds"]["total"] for r in runs])
    # score + cut + train, without the per-step evaluations the benchmark adds
    out["method_s"] = mean_std([sum(h["seconds"].get("step", 0.0) for h in r["history"]) for r in runs])
    out["image_passes"] = runs[0]["settings"]["image_passes"]
    out["plan"] = runs[0]["settings"]["plan"]
    steps = len(runs[0]["history"])
    out["curve"] = [{
        "step": i,
        "seen_images": runs[0]["history"][i]["seen_images"],
        "flops_kept": mean_std([r["history"][i]["flops_kept"] for r in runs]),
        "val_mAP50": mean_std([_pts(r["history"][i]["val"]["mAP50"]) for r in runs]),
        "val_mAP": mean_std([_pts(r["history"][i]["val"]["mAP"]) for r in runs]),
        "train_mAP50": mean_std([_pts(r["history"][i]["train_mAP50"]) for r in runs]),
        "gap": mean_std([_pts(r["history"][i]["gap"]) for r in runs]),
    } for i in range(steps)]
    return out


def plot_curves(rows: dict, path: Path) -> None:
    """Val mAP50 (after each step) and FLOPs kept against the training image-passes spent so far,
    one line per (method, criterion): where each schedule stands at any point of the same budget."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from detprune.utils.atomic import atomic_path

    fig = Figure(figsize=(6.4, 6.0))
    top, bottom = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2)
    for (method, criterion), s in rows.items():
        x = [0] + [sum(p["trained_images"] * p["epochs"] for p in s["plan"][:i]) for i in range(1, len(s["plan"]) + 1)]
        label = f"{method} ({criterion})"
        top.errorbar(x, [c["val_mAP50"]["mean"] for c in s["curve"]], yerr=[c["val_mAP50"]["std"] for c in s["curve"]],
                     marker="o", capsize=3, label=label)
        # each cut comes before its step's training: FLOPs drop at the step's start
        kept = [100 * c["flops_kept"]["mean"] for c in s["curve"][1:]]
        bottom.step(x, kept + kept[-1:], where="post", marker="o", label=label)
    top.set_ylabel("val mAP50 (points)")
    top.legend(fontsize=8)
    bottom.set_ylabel("FLOPs kept (%)")
    bottom.set_xlabel("training image-passes so far")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        FigureCanvasAgg(fig).print_figure(str(tmp), dpi=120)


def fmt(cell: Any, digits: int = 1, percent: bool = False) -> str:
    if cell is None:
        return "-"
    if isinstance(cell, dict):
        if percent:
            return f"{100 * cell['mean']:.1f}%"
        return f"{cell['mean']:.{digits}f} ± {cell['std']:.{digits}f}"
    return f"{100 * cell:.1f}%" if percent else f"{cell:.{digits}f}"


def markdown(base: dict, rows: dict, args) -> str:
    head = ["method", "criterion", "seeds", "image-passes", "FLOPs kept", *[c for c, _ in METRICS],
            "train mAP50", "gap (train - val)", "params (M)", "method s", "wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines.append("| unpruned | - | - | - | 100% | " + " | ".join(fmt(base[c]) for c, _ in METRICS)
                 + f" | {fmt(base['train_mAP50'])} | {fmt(base['gap'])} | {base['params'] / 1e6:.2f} | - | - |")
    for (method, criterion), s in rows.items():
        lines.append(
            f"| {method} | {criterion} | {s['seeds']} | {s['image_passes']} | {fmt(s['flops_kept'], percent=True)} | "
            + " | ".join(fmt(s.get(c)) for c, _ in METRICS)
            + f" | {fmt(s['train_mAP50'])} | {fmt(s['gap'])} | {s['params']['mean'] / 1e6:.2f}"
            + f" | {fmt(s['method_s'], 0)} | {fmt(s['wall_s'], 0)} |"
        )
    text = "\n".join(lines) + "\n"
    for (method, criterion), s in rows.items():
        if method == "one-shot":
            continue
        text += (
            f"\n{method}, {criterion}: after every step (step 0 = the baseline; mean ± std over "
            f"{s['seeds']} seeds)\n\n"
            "| step | frames seen | FLOPs kept | val mAP50 | val mAP50-95 | train mAP50 | gap |\n"
            "|---|---|---|---|---|---|---|\n"
        )
        for c in s["curve"]:
            text += (
                f"| {c['step']} | {c['seen_images']} | {fmt(c['flops_kept'], percent=True)} | {fmt(c['val_mAP50'])} | "
                f"{fmt(c['val_mAP'])} | {fmt(c['train_mAP50'])} | {fmt(c['gap'])} |\n"
            )
    text += (
        f"\nAP in points on {args.val_count} held-out frames; train mAP50 on {args.train_eval_images} seeded frames "
        f"of those seen; gap = train - val mAP50. {args.imgsz} px, batch {args.batch}, lr {args.lr}, warm-up 1 epoch, "
        f"{'best epoch by val' if args.select_best else 'last epoch'} of every training run kept, "
        f"round to {args.round_to}; final target {args.target:g} of the baseline's FLOPs; APP: {args.megabatches} "
        f"megabatches, {args.sparsity_schedule} schedule, replay {args.replay:g}, {args.app_epochs} epochs each; "
        f"iterative: {args.iterative_steps} {args.sparsity_schedule} steps. method s = scoring + cutting + training; "
        "wall s adds the evaluations after every step (val and train mAP) and of the final model.\n"
    )
    return text


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    log = timed_log(started)

    train, val = load_train_val(args.data, val_count=args.val_count, seed=args.split_seed)
    log(f"data: {len(train)} train / {len(val)} val frames from {args.data}")
    adapter = YoloAdapter()
    base_model, base_checkpoint = cached_baseline(args, adapter, train, val, log)
    base_key = holdout.baseline_key(base_checkpoint)
    base = holdout.measure(args, adapter, base_model, val)
    seen = seeded_subset(train, args.train_eval_images, args.split_seed)
    base["train_mAP50"] = 100.0 * float(adapter.evaluate(base_model, seen, imgsz=args.imgsz, batch_size=args.batch,
                                                          progress=False)["mAP50"])
    base["gap"] = base["train_mAP50"] - base["mAP50"]
    log(
        "baseline: " + ", ".join(f"{c} {fmt(base[c])}" for c, _ in METRICS) + f", train mAP50 {base['train_mAP50']:.1f}"
    )

    plan = [(m, c) for m in args.methods for c in args.criteria] + [
        ("app", c) for c in args.app_criteria if "app" in args.methods and c not in args.criteria
    ]
    runs: dict[tuple[str, str], list[dict]] = {}
    failed: list[dict] = []
    total, done = len(plan) * len(args.seeds), 0
    for seed in args.seeds:  # seed-major: a cut-short run still has every method at the first seeds
        for method, criterion in plan:
            done += 1
            try:
                result = one_run(args, adapter, base_model, base_key, train, val, method, criterion, seed, log)
            except DetpruneError as err:
                failed.append({"method": method, "criterion": criterion, "seed": seed, "error": str(err)})
                log(f"run {done}/{total} {method} {criterion} seed {seed}: failed: {err}")
                continue
            runs.setdefault((method, criterion), []).append(result)
            log(
                f"run {done}/{total} {method} {criterion} seed {seed}: "
                + ", ".join(f"{c} {fmt(result[c])}" for c, _ in METRICS)
                + f", gap {fmt(result['gap'])}; FLOPs kept {result['flops_kept']:.1%}; "
                f"{result['seconds']['total']:.0f} s"
            )

    rows = {key: summarise(values) for key, values in sorted(runs.items(), key=lambda kv: plan.index(kv[0]))}
    table = markdown(base, rows, args)
    command = "python benchmarks/compare_schedules.py " + " ".join(sys.argv[1:] if argv is None else argv)
    report = {"command": command.strip(), "settings": vars(args), "baseline": {"checkpoint": base_checkpoint, **base},
              "rows": [{"method": m, "criterion": c, **s} for (m, c), s in rows.items()],
              "runs": [r for values in runs.values() for r in values], "failed": failed,
              "seconds": time.perf_counter() - started}
    out = Path(args.out)
    write_text(out / "results.json", json.dumps(report, indent=2) + "\n")
    plot_curves(rows, out / "curves.png")
    notes = "".join(f"\n- failed: {f['method']} {f['criterion']} seed {f['seed']}: {f['error']}" for f in failed)
    write_text(out / "results.md", f"# Pruning schedules compared\n\n`{report['command']}`\n\n{table}{notes}\n")
    print()
    print(table)
    log(f"wrote {out / 'results.json'}, {out / 'results.md'} and {out / 'curves.png'}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DetpruneError as err:
        print(f"compare_schedules: error: {err}", file=sys.stderr)
        sys.exit(2)
