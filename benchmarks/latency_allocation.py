"""Latency targets met by FLOPs and by a measured latency table: which cut runs at the target?

For each model and latency target T, two cuts of the same L1-magnitude scores:

* ``flops``: the FLOPs-based cut, FLOPs kept = T (``--flops-search`` instead bisects the FLOPs
  fraction, timing each candidate, as ``detprune prune --latency-search flops`` does);
* ``latency``: the knapsack on the latency table's predicted cost (HALP), aimed at a predicted
  latency of T, verified by timing and refined up to twice (``detprune prune --latency-search table``).

A target the limits cannot reach (min channels, max ratio) is a row saying so, not an abort.

Then the original and every cut of the model are timed interleaved on ONNX Runtime (one thread
by default), in ``--final-sessions`` separate sessions, and the achieved latency fraction
printed for each: the median over the sessions, with their range (one session's ratio of a
slow model moves by several percent from the next one's), beside the table's predicted fraction
and its error on random cuts. Results go to ``--out`` (JSON,
written after every model; a rerun skips the models already there).

    python benchmarks/latency_allocation.py --model yolov8n.yaml --imgsz 640 --targets 0.7 0.5 0.3
    python benchmarks/latency_allocation.py --model fasterrcnn_mobilenet_v3_large_fpn --imgsz 384x1248
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")
os.environ.setdefault("DETPRUNE_QUIET", "1")

import numpy as np  # noqa: E402

from detprune.commands.export import parse_imgsz  # noqa: E402
from detprune.errors import DetpruneError  # noqa: E402
from detprune.utils.atomic import write_text  # noqa: E402


def cuts_for(adapter, model, scores, table, targets, args) -> dict:
    """{label: (PruneResult, record)} of the FLOPs and latency cuts at every target."""
    from detprune.pruning import prune_model
    from detprune.pruning.latency_target import prune_by_table, prune_to_latency

    out, unreached = {}, {}
    for target in targets:
        if args.flops_search:
            result, search = prune_to_latency(adapter, model, scores, target=target, imgsz=args.imgsz, runs=args.runs,
                                              threads=args.threads, max_steps=6, allocation="cost", cost="flops")
            out[f"flops {target:g}"] = (result, {"candidates": len(search.candidates)})
        else:
            result = prune_model(adapter, copy.deepcopy(model), scores, target_flops=target, allocation="cost",
                                 cost="flops", latency_table=table, imgsz=args.imgsz)
            out[f"flops {target:g}"] = (result, {})
        try:
            result, search = prune_by_table(adapter, model, scores, table, target=target, imgsz=args.imgsz,
                                            runs=args.runs, threads=args.threads, allocation="cost", progress=print)
        except DetpruneError as err:  # e.g. the limits cannot reach the target
            print(f"latency {target:g}: {err}")
            unreached[f"latency {target:g}"] = str(err)
            continue
        out[f"latency {target:g}"] = (
            result,
            {"candidates": len(search.candidates), "within_tolerance": search.within_tolerance},
        )
    return out, unreached


def run_model(spec: str, args) -> dict:
    from detprune.adapters import get_adapter
    from detprune.criteria import get_criterion
    from detprune.pruning.latency_measure import latency_table, time_models

    adapter = get_adapter(spec)
    model = adapter.prepare_for_pruning(adapter.load(spec)).eval()
    scores = get_criterion("l1").score(adapter, model)
    table = latency_table(adapter, model, backend="onnxruntime", imgsz=args.imgsz, threads=args.threads,
                          check_cuts=args.check_cuts, runs=args.table_runs, cache=args.cache)
    cuts, unreached = cuts_for(adapter, model, scores, table, args.targets, args)
    models = {"original": model, **{k: r.model for k, (r, _) in cuts.items()}}
    sessions = [time_models(adapter, models, args.imgsz, "onnxruntime", args.threads, 3, args.final_runs)
                for _ in range(args.final_sessions)]
    original = float(np.median([s["original"] for s in sessions]))
    rows = []
    for label, (result, record) in cuts.items():
        kind, target = label.split()
        ratios = [s[label] / s["original"] for s in sessions]
        rows.append({"cut": kind, "target": float(target), "achieved": float(np.median(ratios)), "sessions": ratios,
                     "predicted": result.achieved.get("latency"), "flops_kept": result.achieved["flops"],
                     "ms": float(np.median([s[label] for s in sessions])), **record})
    check = {k: v for k, v in table.check.items() if k != "rows"}
    rows += [{"cut": label.split()[0], "target": float(label.split()[1]), "achieved": None, "predicted": None,
              "flops_kept": None, "note": note} for label, note in unreached.items()]
    return {"model": spec, "imgsz": args.imgsz, "threads": args.threads, "original_ms": original, "table": table.key,
            "table_check": check, "rows": rows}


def print_model(entry: dict) -> None:
    check = entry["table_check"]
    print(f"\n{entry['model']} at {entry['imgsz']} px, ONNX Runtime CPU, {entry['threads']} thread(s): "
          f"original {entry['original_ms']:.1f} ms; table off by {check.get('mean_error') or float('nan'):.1%} mean, "
          f"{check.get('max_error') or float('nan'):.1%} max on {check.get('cuts', 0)} random cuts")
    print(f"{'target':>6}  {'cut':<8} {'achieved':>8} {'sessions':>13} {'predicted':>9} {'FLOPs kept':>10}")
    for row in sorted(entry["rows"], key=lambda r: (-r["target"], r["cut"])):
        if row["achieved"] is None:
            print(f"{row['target']:>6.2f}  {row['cut']:<8} not reached: {row['note']}")
            continue
        predicted = f"{row['predicted']:.3f}" if row["predicted"] is not None else "-"
        spread = row.get("sessions") or [row["achieved"]]  # entries written before sessions were recorded: one
        sessions = f"{min(spread):.3f}-{max(spread):.3f}"
        print(f"{row['target']:>6.2f}  {row['cut']:<8} {row['achieved']:>8.3f} {sessions:>13} {predicted:>9} "
              f"{row['flops_kept']:>10.1%}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", default=["yolov8n.yaml"])
    parser.add_argument("--imgsz", default="640", help="640, or HxW such as 384x1248")
    parser.add_argument("--targets", type=float, nargs="+", default=[0.7, 0.5, 0.3])
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (default 1)")
    parser.add_argument("--runs", type=int, default=10, help="timed rounds when a latency cut is verified")
    parser.add_argument("--final-runs", type=int, default=20, help="timed rounds of each final interleaved session")
    parser.add_argument("--final-sessions", type=int, default=3,
                        help="final interleaved sessions (the achieved fraction is their median)")
    parser.add_argument("--table-runs", type=int, default=10, help="timed rounds per layer grid point")
    parser.add_argument("--check-cuts", type=int, default=10, help="random cuts a new table is checked on")
    parser.add_argument("--flops-search", action="store_true", help="bisect the FLOPs fraction by timing (slow)")
    parser.add_argument("--cache", default=None, help="latency table cache folder")
    parser.add_argument("--out", default="runs/latency_allocation.json")
    args = parser.parse_args(argv)
    if args.final_sessions < 1 or args.final_runs < 1:
        parser.error("--final-sessions and --final-runs must be at least 1")
    try:
        args.imgsz = parse_imgsz(args.imgsz)
        out = Path(args.out)
        done = json.loads(out.read_text()) if out.is_file() else {"models": []}
        for spec in args.model:
            size = json.loads(json.dumps(args.imgsz))  # as the JSON holds it
            entry = next((e for e in done["models"] if e["model"] == spec and e["imgsz"] == size), None)
            if entry is None:
                entry = run_model(spec, args)
                done["models"].append(entry)
                out.parent.mkdir(parents=True, exist_ok=True)
                write_text(out, json.dumps(done, indent=1))
            print_model(entry)
    except DetpruneError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
