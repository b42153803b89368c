"""``detprune engine``: build a TensorRT engine from ONNX on this GPU, and optionally time it."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from detprune.commands.export import add_calibration_arguments

HELP = "Build a TensorRT engine (fp32, fp16 or int8) from an ONNX file on this GPU; --bench times it"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML recipe whose fields are defaults for these flags")
    parser.add_argument("--onnx", required=True, help="ONNX file from 'detprune export'")
    parser.add_argument("--out", required=True, help="engine file to write (a .json sidecar is written beside it)")
    parser.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp16")
    parser.add_argument("--workspace", type=float, default=4.0, help="builder workspace limit in GiB")
    parser.add_argument("--batch", type=int, default=1, help="optimal batch (and the largest, unless --max-batch)")
    parser.add_argument("--max-batch", type=int, default=None, help="largest batch of a dynamic-batch graph")
    parser.add_argument("--timing-cache", help="timing cache file, reused between builds (default: beside the engine)")
    add_calibration_arguments(parser)
    parser.add_argument("--calib-cache", help="TensorRT 10 INT8 calibration cache, read if present and written after")
    parser.add_argument(
        "--channel-round", type=int, default=None, help="channel rounding the model was pruned with, for the record"
    )
    parser.add_argument("--bench", action="store_true", help="time the engine after building it")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--runs", type=int, default=200)


def run(args: argparse.Namespace) -> int:
    from detprune.errors import BadInputError
    from detprune.export.calibration import select_images
    from detprune.export.onnx import graph_precision, load_onnx
    from detprune.export.tensorrt import build_engine, current_gpu, import_tensorrt, version_major

    # everything the user gave is checked before TensorRT is looked for
    graph = load_onnx(args.onnx)
    source = graph_precision(graph)
    if source != "fp32" and source != args.precision:
        raise BadInputError(
            f"{args.onnx} is a {source} graph; build it with --precision {source} or give the FP32 export"
        )
    needs_data = args.precision == "int8" and source == "fp32"
    if needs_data and not args.data and not (args.calib_cache and Path(args.calib_cache).is_file()):
        raise BadInputError("an INT8 engine from an FP32 graph needs --data DIR (calibration images)")
    if args.data:
        select_images(args.data, args.calib_images, args.seed)
    max_batch = args.max_batch or args.batch
    if not 1 <= args.batch <= max_batch:
        raise BadInputError(f"need 1 <= --batch <= --max-batch, got {args.batch} and {max_batch}")
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.dim_value > 0 else None for d in dims]
    dynamic = shape[0] is None
    batch = (1, args.batch, max_batch) if dynamic else None
    input_shape = [args.batch if dynamic else shape[0], *[d or 1 for d in shape[1:]]]

    trt = import_tensorrt()
    gpu = current_gpu()
    print(
        f"TensorRT {trt.__version__} on {gpu.name} (sm {gpu.compute_capability}); "
        f"{source} graph -> {args.precision} engine"
    )
    with tempfile.TemporaryDirectory(prefix="detprune-engine-") as work:
        onnx_path, calibration, extra = Path(args.onnx), None, {}
        if source == "fp32" and args.precision != "fp32":
            if version_major(trt.__version__) >= 11:  # strongly typed only: the graph must carry the precision
                onnx_path = _convert(args, onnx_path, Path(work), input_shape)
                extra["converted_from"] = str(args.onnx)
            elif args.precision == "int8" and args.data:
                calibration = _calibration(args, input_shape)
        info = build_engine(
            onnx_path,
            args.out,
            precision=args.precision,
            workspace_gib=args.workspace,
            batch=batch,
            timing_cache=args.timing_cache,
            calibration=calibration,
            calibration_cache=args.calib_cache,
            channel_round=args.channel_round,
            extra=extra,
        )
    print(
        f"{args.out}: {info.precision} engine ({info.build_mode}), built in {info.build_seconds:.1f} s; "
        f"sidecar {args.out}.json"
    )
    if args.bench:
        from detprune.runtime import measure_latency
        from detprune.utils.atomic import write_text

        stats = measure_latency("tensorrt", args.out, input_shape, args.warmup, args.runs)
        print(stats.summary())
        write_text(f"{args.out}.latency.json", json.dumps(stats.as_dict(), indent=2) + "\n")
    return 0


def _convert(args, onnx_path: Path, work: Path, shape: list[int]) -> Path:
    """The FP32 graph turned into the requested precision, for a strongly typed build."""
    from detprune.export.precision import convert_fp16, quantize_int8
    from detprune.commands.export import calibration_inputs

    target = work / f"model.{args.precision}.onnx"
    if args.precision == "fp16":
        result = convert_fp16(onnx_path, target)
    else:
        batches, _, check = calibration_inputs(args, shape)
        result = quantize_int8(onnx_path, target, batches, method=args.calib_method, check_input=check)
    print(f"converted to {result.precision}: {result.parity.describe()}")
    return target


def _calibration(args, shape: list[int]):
    from detprune.commands.export import calibration_inputs

    batches, _, _ = calibration_inputs(args, shape)
    return batches
