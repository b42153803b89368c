"""Accuracy at the cut: k-fold KITTI at 640 px wide, rect letterbox, an equal training budget.

The question: at a FLOPs target, which criterion x allocation x fine-tune (plain or distilled)
keeps the most accuracy, above all on small objects, measured so that the answer survives a
rerun. The protocol, and why:

- KITTI at its own aspect ratio: 640 px wide, letterboxed to ultralytics' ``rect`` batch shape
  (1242x375 -> 640x224: ``ceil(375/1242 * 640 / 32) * 32``), the same (h, w) for scoring,
  training and evaluation. A 32 px pedestrian stays 16 px, where a 320 px square input made it 8.
- k-fold cross-validation over the frames (``detprune.data.folds``): every figure is the mean
  over the folds, so over every frame held out once, with the spread over folds beside it.
  Each fold has its own baseline, trained on the other folds.
- Baseline: the architecture yaml with the given backbone+neck weights (head new), trained a
  fixed number of epochs on the fold's training frames; its per-epoch val curve is recorded and
  plotted (``baseline_curve.png``) so one can see it has flattened.
- Every row is the model after its LAST epoch: nothing is selected on the frames reported.
- Equal budget: pruned rows fine-tune ``--finetune-epochs``; the "baseline, same budget" row
  trains the baseline that many more epochs with the same settings.
- Reproducible: deterministic algorithms, ``--threads`` torch threads, seeded augmentation
  (ultralytics seeds Python, NumPy and torch; ``workers=0`` keeps augmentation in-process).
- Cached and resumable: every finished cell is a ``result.json`` with its settings under
  ``<out>/cells``; a rerun with the same settings reuses it. One progress line per cell.

Outputs in ``--out``: ``results.json``, ``results.md``, ``accuracy_vs_flops.png``,
``baseline_curve.png``.

    python benchmarks/accuracy.py                                    # full run
    python benchmarks/accuracy.py --quick                            # reduced check
    python benchmarks/accuracy.py --baselines-only                   # train (cache) the baselines
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from accuracy_cells import Cell, Runner  # noqa: E402  (this benchmark's own cells)
from accuracy_report import baseline_table, markdown, plot_vs_flops, repeat_table, summarise  # noqa: E402
from detprune.adapters.yolo import YoloAdapter  # noqa: E402
from detprune.criteria.class_weights import parse_class_weights  # noqa: E402
from detprune.data.folds import kfold_splits  # noqa: E402
from detprune.data.loader import load_dataset  # noqa: E402
from detprune.data.stats import size_bucket  # noqa: E402
from detprune.errors import DetpruneError  # noqa: E402
from detprune.utils.atomic import write_text  # noqa: E402
from harness.cache import settings_key  # noqa: E402
from harness.curves import plot_curves  # noqa: E402
from harness.kfold_args import parse_kfold_args  # noqa: E402
from harness.log import timed_log  # noqa: E402
from harness.rect import rect_hw  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    # shared with the tools that read this benchmark's cache: the same arguments give the same keys
    return parse_kfold_args(argv, description=__doc__.split("\n\n")[0])


def small_objects(dataset) -> int:
    """Objects COCO calls small (area under 32x32 px in the original image), ignore regions left out."""
    return sum(int((size_bucket(sample.boxes[~sample.ignore]) == 0).sum()) for sample in dataset)


def grid(args: argparse.Namespace) -> list[Cell]:
    """Every configuration at ``--target``; the ones this installation cannot run are noted, not run."""
    # plain before distilled, the first allocation before the others: the axes that exist first
    return [Cell(args.target, criterion, allocation, distill, args.seed, class_weights=args.class_weights,
                 finetune_weights=args.finetune_class_weights)
            for distill in args.distill for allocation in args.allocations for criterion in args.criteria]


def run_cells(cells: list[Cell], folds: list[int], runner: Runner, log, tag: str) -> tuple[list[dict], list[dict]]:
    results, missing = [], []
    total = len(cells) * len(folds)
    n = 0
    for cell in cells:
        reason = runner.unsupported(cell)
        if reason:
            missing.append({**cell.describe(), "reason": reason})
            log(f"{tag} {cell.label()}: not run ({reason})")
            n += len(folds)
            continue
        for fold in folds:
            n += 1
            if runner.past_stop() and not runner.is_cached(cell, fold):
                missing.append(
                    {
                        **cell.describe(),
                        "fold": fold,
                        "reason": f"not started: past --stop-at {runner.args.stop_at} UTC",
                    }
                )
                continue
            try:
                result = runner.cell(cell, fold)
            except Exception as err:  # one failed cell is reported, not the end of an hours-long run
                text = (str(err).strip().splitlines() or [type(err).__name__])[0]
                err = text if isinstance(err, DetpruneError) else f"{type(err).__name__}: {text}"
                missing.append({**cell.describe(), "fold": fold, "reason": err})
                log(f"{tag} {n}/{total} {cell.label()} fold {fold}: skipped: {err}")
                continue
            results.append(result)
            m = result["metrics"]
            log(f"{tag} {n}/{total} {cell.label()} fold {fold}: mAP50 {m['mAP50']:.1f} AP_small {_pt(m['AP_small'])} "
                f"FLOPs kept {result['flops_kept']:.1%} lat x{_ratio(result)} "
                f"({_took(result)})")
    return results, missing


def _took(result: dict) -> str:
    return "cached" if result.get("cached") else f"{result['seconds']['total']:.0f} s"


def _pt(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def _ratio(result: dict) -> str:
    value = result.get("latency", {}).get("ratio")
    return "-" if value is None else f"{value:.2f}"


def best_configuration(rows: list[dict], target: float, seed: int) -> dict | None:
    """The configuration at ``target`` with the highest mean mAP50 over folds (ties: AP_small)."""
    candidates = [r for r in rows if r["kind"] == "pruned" and math.isclose(r["target"], target)
                  and r["seed"] == seed and not r["replica"]]
    if not candidates:
        return None
    return max(candidates, key=lambda r: (r["mAP50"]["mean"], r["AP_small"]["mean"] if r.get("AP_small") else -1))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    log = timed_log(started, clock=True)
    dataset = load_dataset(args.data)
    hw = rect_hw(dataset, args.width)
    for weights in (args.class_weights, args.finetune_class_weights):  # an unknown class fails before any training
        parse_class_weights(weights, list(dataset.class_names))
    splits = kfold_splits(dataset, args.folds, seed=args.fold_seed)
    folds = args.only_folds if args.only_folds is not None else list(range(args.folds))
    log(f"data: {len(dataset)} frames, {args.folds} folds of {', '.join(str(len(v)) for _, v in splits)}; "
        f"input {hw[1]}x{hw[0]} (rect); classes {', '.join(dataset.class_names)}; folds run: {folds}")
    runner = Runner(args, YoloAdapter(), dataset, splits, hw, settings_key, log)

    for fold in folds:
        runner.baseline(fold)
    if args.baselines_only:
        log("baselines cached; stopping (--baselines-only)")
        return 0

    results, missing = [], []
    for fold in folds:
        results.append(runner.unpruned(fold))
        results.append(runner.same_budget(fold))
    cells = grid(args)
    first_block = [c for c in cells if c.distill == cells[0].distill and c.allocation == cells[0].allocation]
    found, skipped = run_cells(first_block, folds, runner, log, "cell")
    results += found
    missing += skipped

    repeats: list[dict] = []
    if cells and args.repeat and 0 in folds:
        first = cells[0]
        for repeat in args.repeat:
            seed = int(repeat[4:]) if repeat.startswith("seed") else first.seed
            again = dataclasses.replace(first, seed=seed, replica="rerun" if repeat == "rerun" else "")
            found, skipped = run_cells([again], [0], runner, log, f"repeat {repeat}")
            repeats += found
            missing += skipped

    # then the first criterion across the other axes; the best configuration so far at the other
    # targets; last the other criteria across the other axes
    rest = [c for c in cells if c not in first_block and c.criterion == cells[0].criterion]
    found, skipped = run_cells(rest, folds, runner, log, "cell")
    results += found
    missing += skipped

    best = best_configuration(summarise(results), args.target, args.seed)
    if best is not None:
        log(f"best at {args.target:g} so far: {best['criterion']} / {best['allocation']} / "
            f"{'distill' if best['distill'] else 'plain'} (mAP50 {best['mAP50']['mean']:.1f})")
        extra = [
            Cell(
                t,
                best["criterion"],
                best["allocation"],
                best["distill"],
                args.seed,
                class_weights=best["class_weights"],
                finetune_weights=best["finetune_weights"],
            )
            for t in args.extra_targets
        ]
        found, skipped = run_cells(extra, folds, runner, log, "extra")
        results += found
        missing += skipped

    rest = [c for c in cells if c not in first_block and c.criterion != cells[0].criterion]
    found, skipped = run_cells(rest, folds, runner, log, "cell")
    results += found
    missing += skipped
    if args.reevaluate:
        log(f"re-evaluating {len(results) + len(repeats)} finished cells with the installed evaluation code")
        results = [runner.reevaluate(r) for r in results]
        repeats = [runner.reevaluate(r) for r in repeats]
    rows = summarise(results + repeats)
    command = "python benchmarks/accuracy.py " + " ".join(sys.argv[1:] if argv is None else argv)
    report = {
        "command": command.strip(),
        "settings": {k: v for k, v in vars(args).items()},
        "input_hw": list(hw),
        "folds": [[s.image_id for s in val] for _, val in splits],
        "fold_sizes": [len(val) for _, val in splits],
        "small_objects": [small_objects(val) for _, val in splits],
        "baseline_curves": {str(f): runner.curve(f) for f in folds},
        "rows": rows,
        "cells": results,
        "repeats": repeats,
        "not_run": missing,
        "kitti_protocol": runner.kitti_protocol,
        "seconds": time.perf_counter() - started,
    }
    out = Path(args.out)
    write_text(out / "results.json", json.dumps(report, indent=2, default=str) + "\n")
    table = markdown(report, args)
    extra_md = f"\nBaselines per fold:\n\n{baseline_table(report)}"
    if report["repeats"]:
        extra_md += f"\nRun-to-run:\n\n{repeat_table(report)}"
    write_text(out / "results.md", f"# Accuracy at the cut\n\n`{report['command']}`\n\n{table}{extra_md}\n")
    plot_vs_flops(rows, out / "accuracy_vs_flops.png")
    plot_curves(report["baseline_curves"], out / "baseline_curve.png")
    print()
    print(table)
    log(f"wrote {out / 'results.json'}, {out / 'results.md'} and plots")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DetpruneError as err:
        print(f"accuracy: error: {err}", file=sys.stderr)
        sys.exit(2)
