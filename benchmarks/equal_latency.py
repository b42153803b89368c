"""Accuracy at equal latency: re-time finished accuracy-benchmark cells side by side, per fold.

The accuracy benchmark times each cell against its fold's baseline while other cells train, one
pair at a time. To compare two cuts at equal latency (the FLOPs-cost cut against the
latency-cost cut) they are re-timed here on a quiet machine: for every fold, the fold's baseline
and the fine-tuned model of every named cell are exported to ONNX and timed interleaved in one
ONNX Runtime session per repeat (thread spinning off, rounds rotating; 1 thread by default).
Each cell's ratio is its median over the baseline's, averaged over ``--sessions`` sessions, and
printed beside the mAP50 and per-class AP its ``result.json`` recorded.

    python benchmarks/equal_latency.py --cells flops0.5/taylor-cost-plain-seed0 flops0.62/taylor-latency-plain-seed0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from detprune.errors import BadInputError, DetpruneError  # noqa: E402
from detprune.utils.atomic import write_text  # noqa: E402
from harness.kfold_args import add_accuracy_args  # noqa: E402
from harness.kfold_baselines import cached_fold  # noqa: E402

METRICS = ("mAP50", "AP Car", "AP Pedestrian", "AP_small")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", nargs="+", required=True, metavar="TARGET/NAME",
                   help="cells under the benchmark's OUT/cells, e.g. flops0.5/taylor-cost-plain-seed0")
    p.add_argument("--folds", default=None, help="comma-separated fold indices (default: all)")
    p.add_argument("--sessions", type=int, default=2, help="timing sessions per fold (their ratios are averaged)")
    p.add_argument("--runs", type=int, default=60, help="interleaved rounds per session")
    p.add_argument("--warmup", type=int, default=5)
    add_accuracy_args(p, "baselines and cells")
    p.add_argument("--out", default="runs/equal_latency.json")
    args = p.parse_args(argv)
    if args.sessions < 1 or args.runs < 1:
        p.error("--sessions and --runs must be at least 1")
    return args


def fine_tuned(cell_dir: Path) -> Path:
    """The fold's fine-tuned checkpoint (the model after the last epoch, as the benchmark reports)."""
    path = cell_dir / "finetune" / "train" / "weights" / "last.pt"
    if not path.is_file() or not (cell_dir / "result.json").is_file():
        raise BadInputError(f"{cell_dir}: no finished cell (run benchmarks/accuracy.py for it first)")
    return path


def time_fold(runner, fold: int, cells: list[str], args, work: Path) -> dict:
    """{cell: {"ratios": [per session], "metrics": {...}, "flops_kept": f}} for one fold."""
    from ultralytics.nn.tasks import load_checkpoint

    from detprune.runtime.ort import onnxruntime_side_by_side

    paths, found = {"baseline": runner.baseline_onnx(fold)}, {}
    for i, cell in enumerate(cells):
        folder = runner.out / "cells" / cell / f"fold{fold}"
        model, _ = load_checkpoint(str(fine_tuned(folder)))
        paths[cell] = runner.export(
            runner.adapter.prepare_for_pruning(model.float()), work / f"cell{i}-fold{fold}.onnx"
        )
        result = json.loads((folder / "result.json").read_text())
        found[cell] = {"metrics": {k: result["metrics"].get(k) for k in METRICS}, "flops_kept": result["flops_kept"],
                       "ratios": []}
    for session in range(args.sessions):
        timed = onnxruntime_side_by_side(paths, [1, 3, *runner.hw], warmup=args.warmup, runs=args.runs,
                                         threads=runner.args.threads)
        base = timed["baseline"].median_ms
        for cell in cells:
            found[cell]["ratios"].append(timed[cell].median_ms / base)
        print(f"fold {fold} session {session + 1}: baseline {base:.1f} ms; "
              + ", ".join(f"{cell} {found[cell]['ratios'][-1]:.3f}" for cell in cells), flush=True)
    return found


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench, runner, _ = cached_fold(args.accuracy_args, 0)
    folds = [int(f) for f in args.folds.split(",")] if args.folds else list(range(bench.folds))
    per_fold = {}
    with tempfile.TemporaryDirectory() as work:
        for fold in folds:
            cached_fold(args.accuracy_args, fold)  # a clear error for a fold without a baseline
            per_fold[fold] = time_fold(runner, fold, args.cells, args, Path(work))
    print(f"\n{'cell':50s} {'latency ratio':>13s} {'FLOPs kept':>10s} " + " ".join(f"{m:>13s}" for m in METRICS))
    summary = {}
    for cell in args.cells:
        rows = [per_fold[fold][cell] for fold in folds]
        summary[cell] = {
            "latency_ratio": float(np.mean([np.mean(r["ratios"]) for r in rows])),
            "latency_ratio_per_fold": [float(np.mean(r["ratios"])) for r in rows],
            "flops_kept": float(np.mean([r["flops_kept"] for r in rows])),
            **{m: float(np.mean([r["metrics"][m] for r in rows])) for m in METRICS},
            f"{METRICS[0]}_per_fold": [r["metrics"][METRICS[0]] for r in rows],
        }
        s = summary[cell]
        print(
            f"{cell:50s} {s['latency_ratio']:13.3f} {s['flops_kept']:10.1%} "
            + " ".join(f"{s[m]:13.1f}" for m in METRICS)
        )
    report = {"command": "python benchmarks/equal_latency.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "folds": folds, "input_hw": list(runner.hw), "threads": runner.args.threads, "sessions": args.sessions,
              "runs": args.runs, "cells": summary, "per_fold": {str(f): v for f, v in per_fold.items()}}
    write_text(Path(args.out), json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DetpruneError as err:
        print(f"equal_latency: error: {err}", file=sys.stderr)
        sys.exit(2)
