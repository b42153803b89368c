"""ONNX Runtime CPU latency against FLOPs: does a pruned model run as much faster as it is smaller?

Times the original model and each pruned one on ONNX Runtime (CPU, explicit thread count) and
prints FLOPs, parameters, median / p90 latency and the two ratios to the original. Channel
counts matter beyond FLOPs: a width that misses the SIMD or tensor-core tile (8, 16) wastes
lanes, which is why the pruner can round each group to a multiple of ``--round-to``.

Pruned models come from checkpoints (``--pruned a.pt b.pt``) or are made here with the
data-free L1 filter-magnitude criterion at each ``--flops`` target and ``--round-to`` value:

    python benchmarks/bench_latency.py --model yolov8n.yaml --flops 0.7 0.5 0.3 --round-to 1 8 16 --imgsz 640
    python benchmarks/bench_latency.py --model yolov8n.pt --pruned pruned50.pt pruned30.pt --json latency.json

The models are timed in turn, one run of each per round, so that the background load of a
shared machine falls on all of them alike; still, compare medians taken in one run, never
across runs.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")
os.environ.setdefault("DETPRUNE_QUIET", "1")

from detprune.commands.export import load_model, parse_imgsz  # noqa: E402
from detprune.errors import DetpruneError  # noqa: E402
from detprune.runtime import default_threads  # noqa: E402
from detprune.runtime.ort import onnxruntime_side_by_side  # noqa: E402
from detprune.export.onnx import export_onnx  # noqa: E402
from detprune.utils.atomic import write_text  # noqa: E402
from detprune.workflow.measure import model_cost  # noqa: E402


def pruned_variants(adapter, model, flops: list[float], round_to: list[int], imgsz):
    """(label, round_to, model) pruned here by L1 filter magnitude to each FLOPs target."""
    from detprune.criteria import get_criterion
    from detprune.pruning.pruner import prune_model

    for keep in flops:
        for rounding in round_to:
            candidate = adapter.prepare_for_pruning(copy.deepcopy(model))
            scores = get_criterion("l1").score(adapter, candidate)
            result = prune_model(adapter, candidate, scores, target_flops=keep, round_to=rounding, imgsz=imgsz)
            yield f"l1 {keep:.0%} r{rounding}", rounding, result.model


def export_for_timing(adapter, model, args, path: Path) -> dict:
    """Cost of the model and its ONNX graph (unchecked: only its speed matters here)."""
    example = adapter.example_inputs(model, args.imgsz, args.batch)
    cost = model_cost(adapter, model, args.imgsz)
    params, flops = cost.params, cost.flops
    export_onnx(adapter.export_module(model), example, path, check=False)
    return {"params": params, "flops": flops, "shape": list(example.shape)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="yolov8n.yaml", help="the original model (checkpoint, yaml or name)")
    parser.add_argument("--pruned", nargs="*", default=[], help="pruned checkpoints to time")
    parser.add_argument(
        "--flops", nargs="*", type=float, default=[], help="FLOPs fractions to prune to here (e.g. 0.7 0.5 0.3)"
    )
    parser.add_argument(
        "--round-to", nargs="*", type=int, default=[8], help="channel rounding for --flops (e.g. 1 8 16)"
    )
    parser.add_argument("--imgsz", type=parse_imgsz, default=640)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", help="write the rows to this JSON file")
    args = parser.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-latency-") as work:
            adapter, original = load_model(args.model)
            models = [("original", None, original)]
            models += [(str(spec), None, load_model(spec)[1]) for spec in args.pruned]
            models += list(pruned_variants(adapter, original, args.flops, args.round_to, args.imgsz))
            rows, paths = [], {}
            for index, (name, rounding, model) in enumerate(models):
                paths[name] = Path(work) / f"model{index}.onnx"
                rows.append(
                    {"name": name, "round_to": rounding, **export_for_timing(adapter, model, args, paths[name])}
                )
            shape = rows[0].pop("shape")
            for row in rows[1:]:
                if row.pop("shape") != shape:
                    raise DetpruneError(f"{row['name']} takes another input shape than the original; give one --imgsz")
            stats = onnxruntime_side_by_side(paths, shape, args.warmup, args.runs, threads=args.threads)
            for row in rows:
                row["latency"] = stats[row["name"]].as_dict()
    except DetpruneError as err:
        print(f"bench_latency.py: error: {err}", file=sys.stderr)
        return 2

    base = rows[0]
    print(f"{'model':<16} {'GFLOPs':>7} {'params':>8} {'median ms':>10} {'p90 ms':>8} {'FLOPs x':>8} {'latency x':>9}")
    for row in rows:
        lat = row["latency"]
        row["flops_ratio"] = row["flops"] / base["flops"]
        row["latency_ratio"] = lat["median_ms"] / base["latency"]["median_ms"]
        print(f"{row['name']:<16} {row['flops'] / 1e9:>7.2f} {row['params'] / 1e6:>7.2f}M {lat['median_ms']:>10.1f} "
              f"{lat['p90_ms']:>8.1f} {row['flops_ratio']:>8.2f} {row['latency_ratio']:>9.2f}")
    first = base["latency"]
    print(
        f"onnxruntime on {first['device']}, {first['threads']} thread(s), input "
        f"{'x'.join(map(str, first['input_shape']))}, "
        f"median of {first['runs']} interleaved runs after {first['warmup']} warm-up"
    )
    if args.json:
        write_text(args.json, json.dumps({"imgsz": args.imgsz, "batch": args.batch, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
