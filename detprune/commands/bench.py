"""``detprune bench``: the original and the pruned model timed side by side, in one run.

A pruned model that halves the FLOPs rarely halves the latency (memory traffic, kernel launch
overhead and channel counts that miss the hardware's tile sizes do not shrink with FLOPs), so
the latency ratio is printed beside the FLOPs ratio.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from detprune.commands.export import load_model, parse_imgsz

from detprune.commands.shared import add_loading_arguments
from detprune.runtime import names as latency_backends

HELP = "Time the original and pruned models side by side; latency ratio beside FLOPs ratio"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML recipe whose fields are defaults for these flags")
    parser.add_argument("--model", required=True, help="the original model (checkpoint, yaml or name)")
    parser.add_argument("--pruned", required=True, nargs="+", help="one or more pruned checkpoints")
    add_loading_arguments(parser, weights=False)
    parser.add_argument("--backend", choices=latency_backends(), default="onnxruntime")
    parser.add_argument(
        "--imgsz",
        type=parse_imgsz,
        default=None,
        help="input size: 640 or H,W (default: --model's training size, else the default of every "
        "command); every model is timed at it",
    )
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument(
        "--threads", type=int, default=None, help="ONNX Runtime threads (default: the cores this process may use)"
    )
    parser.add_argument("--precision", choices=("fp32", "fp16"), default="fp16", help="TensorRT engine precision")
    parser.add_argument("--json", help="also write the measurements to this JSON file")


def _cost(adapter, model, imgsz):
    """(params, FLOPs) on the adapter's traced path (R-CNN counts its RPN and box head too)."""
    from detprune.workflow.measure import model_cost

    cost = model_cost(adapter, model, imgsz)
    return cost.params, cost.flops


def time_model(args, adapter, model, work: Path, tag: str):
    """Latency of one model on the GPU backends (ONNX Runtime models are timed together, see run)."""
    from detprune.runtime import measure_latency, prepare

    example = adapter.example_inputs(model, args.imgsz, args.batch)
    artifact = prepare(
        args.backend, adapter.export_module(model), example, work, tag, precision=args.precision, check=True
    )
    return measure_latency(args.backend, artifact, list(example.shape), args.warmup, args.runs)


def run(args: argparse.Namespace) -> int:
    from detprune.errors import BadInputError
    from detprune.utils.atomic import write_text

    if args.batch < 1 or args.runs < 1 or args.warmup < 0:
        raise BadInputError("need --batch >= 1, --runs >= 1 and --warmup >= 0")
    from detprune.workflow.onnx_input import refuse_onnx

    for spec in [args.model, *args.pruned]:
        refuse_onnx(spec, "bench")
    specs = [("original", args.model)] + list(zip(pruned_labels(args.pruned), args.pruned))
    rows, onnx_paths = [], {}
    with tempfile.TemporaryDirectory(prefix="detprune-bench-") as work:
        for tag, spec in specs:
            adapter, model = load_model(spec)
            if tag == "original":
                from detprune.workflow.imgsz import resolve_imgsz

                args.imgsz = resolve_imgsz(args.imgsz, model)
            example = adapter.example_inputs(model, args.imgsz, args.batch)
            params, flops = _cost(adapter, model, args.imgsz)
            row = {"name": tag, "model": str(spec), "params": params, "flops": flops}
            if args.backend == "onnxruntime":
                from detprune.export.onnx import export_onnx

                onnx_paths[tag] = export_onnx(
                    adapter.export_module(model), example, Path(work) / f"{tag}.onnx", check=False
                ).path
                row["shape"] = list(example.shape)
            else:
                row["latency"] = time_model(args, adapter, model, Path(work), tag).as_dict()
            rows.append(row)
        if args.backend == "onnxruntime":
            from detprune.runtime.ort import onnxruntime_side_by_side

            shapes = {tuple(row.pop("shape")) for row in rows}
            if len(shapes) != 1:
                raise BadInputError(
                    f"the models take different input shapes {sorted(shapes)}; give one --imgsz they share"
                )
            stats = onnxruntime_side_by_side(
                onnx_paths, list(shapes.pop()), args.warmup, args.runs, threads=args.threads
            )
            for row in rows:
                row["latency"] = stats[row["name"]].as_dict()
    for row in rows:
        lat = row["latency"]
        print(
            f"{row['name']}: {lat['backend']} ({lat['precision']}, {lat['device']}): median {lat['median_ms']:.2f} ms, "
            f"p90 {lat['p90_ms']:.2f} ms, p99 {lat['p99_ms']:.2f} ms, {lat['throughput']:.1f} img/s"
        )

    base = rows[0]
    for row in rows:
        row["flops_ratio"] = row["flops"] / base["flops"]
        row["latency_ratio"] = row["latency"]["median_ms"] / base["latency"]["median_ms"]
    print(format_table(rows))
    if args.json:
        write_text(
            args.json,
            json.dumps({"backend": args.backend, "imgsz": args.imgsz, "batch": args.batch, "models": rows}, indent=2)
            + "\n",
        )
    return 0


def pruned_labels(paths: list[str]) -> list[str]:
    """Row names of the pruned models: "pruned" for one; else their file names, with as many parent
    folders as tell them apart (runs/a/pruned.pt and runs/b/pruned.pt: a/pruned.pt, b/pruned.pt)."""
    if len(paths) == 1:
        return ["pruned"]
    parts = [Path(p).parts for p in paths]
    for depth in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [f"{i}: {p}" for i, p in enumerate(paths, 1)]  # the same path given twice


def format_table(rows: list[dict]) -> str:
    """The side-by-side table: cost, latency percentiles, and both ratios to the first row."""
    name = max(10, *(len(r["name"]) for r in rows))
    header = (
        f"{'model':<{name}} {'params':>9} {'GFLOPs':>8} {'median ms':>10} {'p90 ms':>8} {'p99 ms':>8} "
        f"{'img/s':>8} {'FLOPs x':>8} {'latency x':>9}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        lat = row["latency"]
        lines.append(
            f"{row['name']:<{name}} {row['params'] / 1e6:>8.2f}M {row['flops'] / 1e9:>8.2f} {lat['median_ms']:>10.2f} "
            f"{lat['p90_ms']:>8.2f} {lat['p99_ms']:>8.2f} {lat['throughput']:>8.1f} {row['flops_ratio']:>8.2f} "
            f"{row['latency_ratio']:>9.2f}"
        )
    first = rows[0]["latency"]
    lines.append(
        f"backend {first['backend']} ({first['precision']}) on {first['device']}, "
        f"input {'x'.join(map(str, first['input_shape']))}"
        + (f", {first['threads']} thread(s)" if first.get("threads") else "")
    )
    return "\n".join(lines)
