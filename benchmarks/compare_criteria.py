"""Pruning criteria compared on real KITTI frames: accuracy, small-object AP and cost per FLOPs target.

The question: at a FLOPs target, which channel criterion keeps the most accuracy, and above all
the most small-object AP, once the pruned model is fine-tuned with a fixed budget?

1. split the KITTI folder into train / val (``--val-count`` frames held out, ``--split-seed``);
2. build YOLOv5n with the COCO-pretrained backbone and neck (the Detect head is new), train
   head and body on the train split to a baseline; the baseline is cached under
   ``<out>/cache/<key>`` where ``key`` hashes every setting it depends on, so reruns skip it;
3. for every FLOPs target x criterion x seed: score the baseline's channels on the train
   split, prune a copy to the target (channels in multiples of ``--round-to``), fine-tune it
   with the same budget, evaluate on the val split (mAP50, mAP50-95, AP_small, KITTI moderate
   AP_R40), count params and FLOPs, time ONNX Runtime on the CPU;
4. tabulate mean and standard deviation over seeds per (target, criterion) beside the
   unpruned baseline; print the Markdown table, write ``results.json`` and ``results.md``
   (and the baseline as ``<out>/baseline.pt``).

The seed drives the scoring images' order, the random criterion and the fine-tuning run; the
split stays fixed (``--split-seed``), so every row is measured on the same 15 frames. Each
finished run is kept in ``<out>/runs/.../result.json`` with its settings and reused on a
rerun with the same settings.

    python benchmarks/compare_criteria.py                                     # full run
    python benchmarks/compare_criteria.py --imgsz 320 --baseline-epochs 30 \\
        --finetune-epochs 5 --targets 0.5 --seeds 0,1,2                        # reduced run

Criteria are names from the registry (``detprune.criteria``); a new one (e.g. CATRO, CAR)
joins with ``--criteria saliency,l1,catro``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")

sys.path.insert(0, str(Path(__file__).resolve().parent))

from detprune.adapters.yolo import YoloAdapter  # noqa: E402
from detprune.criteria import get_criterion  # noqa: E402
from detprune.data.loader import load_train_val  # noqa: E402
from detprune.errors import DetpruneError  # noqa: E402
from detprune.utils.atomic import write_text  # noqa: E402
from harness.holdout import DEFAULTS, METRICS, baseline, baseline_key, fmt, measure, one_run  # noqa: E402
from harness.log import timed_log  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=DEFAULTS["data"], help="KITTI folder")
    p.add_argument("--model", default=DEFAULTS["model"], help="architecture yaml")
    p.add_argument("--weights", default=DEFAULTS["weights"],
                   help="state dict loaded into --model where names and shapes match (the head is trained)")
    p.add_argument("--val-count", type=int, default=DEFAULTS["val_count"], help="frames held out for evaluation")
    p.add_argument("--split-seed", type=int, default=DEFAULTS["split_seed"],
                   help="seed of the train/val split (fixed across runs)")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--batch", type=int, default=8, help="training and scoring batch size")
    p.add_argument("--lr", type=float, default=0.01, help="SGD learning rate of baseline and fine-tuning")
    p.add_argument("--baseline-epochs", type=int, default=100)
    p.add_argument("--finetune-epochs", type=int, default=20)
    p.add_argument("--targets", default="0.7,0.5,0.3", help="fractions of the FLOPs kept, comma-separated")
    p.add_argument("--criteria", default="saliency,l1,taylor,random", help="criterion names, comma-separated")
    p.add_argument("--seeds", default="0,1,2", help="seeds, comma-separated (>= 3 for a spread)")
    p.add_argument("--round-to", type=int, default=8)
    p.add_argument("--car-max-channels", type=int, default=DEFAULTS["car_max_channels"],
                   help="CAR: channels masked per layer (the rest get the layer's median score)")
    p.add_argument("--latency-runs", type=int, default=50, help="timed ONNX Runtime runs per model (0 = none)")
    p.add_argument("--out", default="runs/compare_criteria", help="results, cache and per-run folders")
    args = p.parse_args(argv)
    args.targets = [float(t) for t in args.targets.split(",") if t.strip()]
    args.criteria = [c.strip() for c in args.criteria.split(",") if c.strip()]
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if not all(0 < t < 1 for t in args.targets):
        p.error("--targets are fractions in (0, 1)")
    if not args.criteria or not args.seeds:
        p.error("give at least one criterion and one seed")
    for name in args.criteria:
        get_criterion(name)  # an unknown name fails here, before any training
    return args


def summarise(runs: list[dict]) -> dict:
    """Mean and standard deviation over seeds of every numeric column."""
    columns = [c for c, _ in METRICS] + ["params", "flops", "latency_ms", "flops_kept", "score_s"]
    runs = [{**r, "score_s": r["seconds"]["score"]} for r in runs]
    out: dict[str, Any] = {"seeds": len(runs)}
    for column in columns:
        values = [r[column] for r in runs if r.get(column) is not None]
        if values:
            out[column] = {
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            }
    return out


def goal_check(base: dict, rows: dict, target: float) -> dict | None:
    """Saliency's AP_small above every other criterion's, and mAP50 within 1 point of the baseline."""
    mine = rows.get((target, "saliency"))
    others = {c: s for (t, c), s in rows.items() if t == target and c != "saliency"}
    if mine is None or not others:
        return None
    ap_small = mine["AP_small"]["mean"]
    drop = base["mAP50"] - mine["mAP50"]["mean"]
    return {"target": target, "saliency_AP_small": ap_small,
            "best_other_AP_small": max(s["AP_small"]["mean"] for s in others.values()),
            "AP_small_above_all": all(ap_small > s["AP_small"]["mean"] for s in others.values()),
            "mAP50_drop": drop, "mAP50_within_1pt": drop <= 1.0}


def markdown(base: dict, rows: dict, args: argparse.Namespace) -> str:
    head = [
        "FLOPs target",
        "criterion",
        "seeds",
        "FLOPs kept",
        *[c for c, _ in METRICS],
        "Δ mAP50",
        "params (M)",
        "GFLOPs",
        "CPU ms",
        "scoring s",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines.append("| 1.0 | unpruned | - | 100% | " + " | ".join(fmt(base[c]) for c, _ in METRICS)
                 + f" | - | {base['params'] / 1e6:.2f} | {base['flops'] / 1e9:.2f} | {fmt(base['latency_ms'])} | - |")
    for (target, criterion), s in rows.items():
        delta = {"mean": s["mAP50"]["mean"] - base["mAP50"], "std": s["mAP50"]["std"]}
        lines.append(f"| {target:g} | {criterion} | {s['seeds']} | {s['flops_kept']['mean']:.1%} | "
                     + " | ".join(fmt(s.get(c)) for c, _ in METRICS)
                     + f" | {delta['mean']:+.1f} | {s['params']['mean'] / 1e6:.2f} | {s['flops']['mean'] / 1e9:.2f}"
                     + f" | {fmt(s.get('latency_ms'))} | {fmt(s.get('score_s'))} |")
    note = (
        f"\nAP in points on {args.val_count} held-out frames (mean ± std over seeds {','.join(map(str, args.seeds))}); "
        f"{args.imgsz} px; baseline {args.baseline_epochs} epochs, fine-tuning {args.finetune_epochs} epochs; "
        f"GFLOPs = 2 x GMACs at {args.imgsz} px; CPU ms = ONNX Runtime median at batch 1.\n"
    )
    return "\n".join(lines) + "\n" + note


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    log = timed_log(started)

    train, val = load_train_val(args.data, val_count=args.val_count, seed=args.split_seed)
    log(f"data: {len(train)} train / {len(val)} val frames from {args.data}; classes {', '.join(train.class_names)}")
    adapter = YoloAdapter()
    base_model, base_checkpoint = baseline(args, adapter, train, val, log)
    # a stable path for single 'detprune prune' runs on the same model (configs/yolov5n-kitti-tiny-benchmark.yaml)
    adapter.save(base_model, Path(args.out) / "baseline.pt", meta={"compare_criteria_baseline": base_checkpoint})
    base = measure(args, adapter, base_model, val)
    log("baseline: " + ", ".join(f"{c} {fmt(base[c])}" for c, _ in METRICS))
    base_key = baseline_key(base_checkpoint)

    runs: dict[tuple[float, str], list[dict]] = {}
    total = len(args.targets) * len(args.criteria) * len(args.seeds)
    done = 0
    skipped: list[dict] = []
    for target in args.targets:
        for criterion in args.criteria:
            for seed in args.seeds:
                done += 1
                try:
                    result = one_run(args, adapter, base_model, base_key, train, val, target, criterion, seed, log)
                except DetpruneError as err:  # e.g. a target this criterion's scores cannot meet within 2%
                    skipped.append({"target": target, "criterion": criterion, "seed": seed, "error": str(err)})
                    log(f"run {done}/{total} flops {target:g} {criterion:<8} seed {seed}: skipped: {err}")
                    continue
                runs.setdefault((target, criterion), []).append(result)
                log(f"run {done}/{total} flops {target:g} {criterion:<8} seed {seed}: "
                    + ", ".join(f"{c} {fmt(result[c])}" for c, _ in METRICS)
                    + f"; FLOPs kept {result['flops_kept']:.1%}; {result['seconds']['total']:.0f} s")

    rows = {key: summarise(values) for key, values in runs.items()}
    checks = [c for c in (goal_check(base, rows, t) for t in args.targets) if c is not None]
    table = markdown(base, rows, args)
    command = "python benchmarks/compare_criteria.py " + " ".join(sys.argv[1:] if argv is None else argv)
    report = {
        "command": command.strip(),
        "settings": {k: v for k, v in vars(args).items()},
        "baseline": {"checkpoint": base_checkpoint, **base},
        "rows": [{"target": t, "criterion": c, **s} for (t, c), s in rows.items()],
        "runs": [r for values in runs.values() for r in values],
        "goal": checks,
        "skipped": skipped,
        "seconds": time.perf_counter() - started,
    }
    out = Path(args.out)
    write_text(out / "results.json", json.dumps(report, indent=2) + "\n")
    notes = "".join(
        f"\n- skipped: flops {s['target']:g} {s['criterion']} seed {s['seed']}: {s['error']}" for s in skipped
    )
    write_text(out / "results.md", f"# Criteria compared\n\n`{report['command']}`\n\n{table}{notes}\n")
    print()
    print(table)
    for check in checks:
        print(f"flops {check['target']:g}: saliency AP_small {check['saliency_AP_small']:.1f} vs best other "
              f"{check['best_other_AP_small']:.1f} (above all: {check['AP_small_above_all']}); mAP50 drop "
              f"{check['mAP50_drop']:+.1f} (within 1 point: {check['mAP50_within_1pt']})")
    log(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DetpruneError as err:
        print(f"compare_criteria: error: {err}", file=sys.stderr)
        sys.exit(2)
