"""``detprune export``: write a model's ONNX graph in FP32, mixed FP16 or Q/DQ INT8, checked."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from detprune.commands.shared import add_loading_arguments
from detprune.defaults import DEFAULT_IMGSZ

HELP = "Export a model to ONNX (fp32, fp16 or int8) and print how closely each graph matches"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML recipe whose fields are defaults for these flags")
    parser.add_argument("--model", required=True, help="checkpoint (.pt), or architecture yaml / name")
    add_loading_arguments(parser, weights=False)
    parser.add_argument("--out", required=True, help="ONNX file to write (never the --model file itself)")
    parser.add_argument("--exist-ok", action="store_true", help="replace an existing --out file")
    parser.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32")
    add_calibration_arguments(parser)
    parser.add_argument("--imgsz", type=parse_imgsz, default=None,
                        help="input size: 640 or H,W (e.g. 224,640); default: the model's training size, else "
                             f"{DEFAULT_IMGSZ}, as every command")
    parser.add_argument("--letterbox", choices=("square", "rect"), default="square",
                        help="how frames are fitted into the input (recorded in the graph's metadata): square pads "
                             "into the fixed canvas (default); rect is the canvas of the frames' aspect ratio")
    parser.add_argument("--batch", type=int, default=1, help="batch size of the exported input")
    parser.add_argument("--dynamic-batch", action="store_true", help="make the batch axis dynamic")
    parser.add_argument("--simplify", action="store_true", help="simplify the graph with onnxslim")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (17 or newer)")
    parser.add_argument("--keep-fp32", action="append", default=[], metavar="NODE",
                        help="ONNX node name to keep in FP32 besides the decode tail (repeatable)")
    parser.add_argument(
        "--eval-data",
        default=None,
        metavar="DATA",
        help="dataset to score the graphs on: mAP, mAP50 and AP_small of FP32 beside the converted graph",
    )
    parser.add_argument("--eval-images", type=int, default=None, help="score on a seeded subset of this many images")
    parser.add_argument("--class-map", default=None, help="class map for a KITTI or COCO --eval-data")


def add_calibration_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="dataset or image folder for INT8 calibration")
    parser.add_argument("--calib-images", type=int, default=300, help="number of calibration images")
    parser.add_argument("--seed", type=int, default=0, help="seed that picks the calibration images")
    parser.add_argument("--calib-method", choices=("minmax", "entropy", "percentile"), default="minmax",
                        help="how activation ranges are found from the calibration images")


def parse_imgsz(text: str | int) -> int | tuple[int, int]:
    if isinstance(text, int):
        return text
    parts = [p for p in str(text).replace("x", ",").split(",") if p.strip()]
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--imgsz takes 640 or H,W, got {text!r}") from None
    if len(sizes) not in (1, 2) or min(sizes) < 32:
        raise argparse.ArgumentTypeError(f"--imgsz takes one or two sizes of at least 32, got {text!r}")
    return sizes[0] if len(sizes) == 1 else (sizes[0], sizes[1])


def load_model(spec: str):
    """(adapter, model) for a checkpoint file, or an architecture yaml / name."""
    from detprune.adapters import get_adapter

    adapter = get_adapter(spec)
    path = Path(spec)
    model = adapter.load_checkpoint(path) if path.is_file() and path.suffix.lower() == ".pt" else adapter.load(spec)
    return adapter, model.eval()


def calibration_inputs(args, input_shape):
    """(calibration batches, their count, held-out check input) for ``--data``, letterboxed to the input size."""
    from detprune.export.calibration import iter_batches, load_image, select_images

    split = select_images(args.data, args.calib_images, args.seed)
    batch, height, width = input_shape[0], input_shape[2], input_shape[3]
    batch = batch if isinstance(batch, int) and batch > 0 else 1
    holdout = split.holdout or split.calibration[0]
    import numpy as np

    check = np.stack([load_image(holdout, (height, width))] * batch)
    print(
        f"calibration: {len(split.calibration)} image(s) from {args.data} (seed {args.seed}); parity checked on "
        f"{holdout.name}"
    )
    return iter_batches(split.calibration, (height, width), batch), len(split.calibration) // batch, check


def run(args: argparse.Namespace) -> int:
    from detprune.commands.outputs import check_output_file
    from detprune.errors import BadInputError
    from detprune.export.calibration import select_images
    from detprune.export.onnx import export_onnx
    from detprune.export.precision import convert_fp16, quantize_int8
    from detprune.utils.progress import progress_bar

    if args.batch < 1:
        raise BadInputError(f"--batch must be at least 1, got {args.batch}")
    if args.precision == "int8" and not args.data:
        raise BadInputError("--precision int8 needs --data DIR: calibration images from the dataset")
    if args.data:
        select_images(args.data, args.calib_images, args.seed)  # a bad folder fails before the export
    out = Path(args.out)
    check_output_file(out, args.exist_ok, inputs=[args.model, args.data, args.eval_data])
    adapter, model = load_model(args.model)
    from detprune.workflow.config import imgsz_text
    from detprune.workflow.imgsz import imgsz_source, resolve_imgsz

    source = imgsz_source(args.imgsz, model)
    args.imgsz = resolve_imgsz(args.imgsz, model)
    print(f"input {imgsz_text(args.imgsz)} ({source})")
    dataset = eval_dataset(args, adapter, model) if args.eval_data else None
    module = adapter.export_module(model)
    example = adapter.example_inputs(model, args.imgsz, args.batch)
    if args.precision == "fp32":
        result = export_onnx(
            module, example, out, opset=args.opset, dynamic_batch=args.dynamic_batch, simplify=args.simplify
        )
        _describe_graph(out, adapter, model, args, "fp32")
        print(f"fp32 vs PyTorch: {result.parity.describe()}")
        print(result.summary())
        if dataset is not None:
            print_accuracy(adapter, model, dataset, {"fp32": out})
        return 0

    with tempfile.TemporaryDirectory(prefix="detprune-export-") as work:
        fp32 = export_onnx(module, example, Path(work) / "fp32.onnx", opset=args.opset,
                           dynamic_batch=args.dynamic_batch, simplify=args.simplify)
        print(f"fp32 vs PyTorch: {fp32.parity.describe()}")
        check, batches, count = None, None, None
        if args.data:
            batches, count, check = calibration_inputs(args, list(example.shape))
        if args.precision == "fp16":
            converted = convert_fp16(fp32.path, out, keep_fp32=args.keep_fp32, check_input=check)
        else:
            converted = quantize_int8(fp32.path, out, batches, method=args.calib_method, check_input=check,
                                      keep_fp32=args.keep_fp32,
                                      progress=lambda it: progress_bar(it, total=count, desc="calibrate"))
        _describe_graph(out, adapter, model, args, converted.precision)
        print(f"{converted.precision} vs fp32: {converted.parity.describe()}")
        print(converted.summary())
        if dataset is not None:  # while the FP32 graph still exists
            print_accuracy(adapter, model, dataset, {"fp32": fp32.path, converted.precision: out})
    return 0


def _describe_graph(out: Path, adapter, model, args, precision: str) -> None:
    """Class names, input shape, letterbox, preprocessing and output layout into the graph's metadata."""
    from detprune.workflow.onnx_metadata import onnx_metadata, write_onnx_metadata

    entries = onnx_metadata(adapter, model, args.imgsz, batch=args.batch, letterbox=args.letterbox, precision=precision)
    write_onnx_metadata(out, entries)
    print(f"metadata: {len(adapter.class_names(model))} class names, input {entries['detprune.input']}, letterbox "
          f"{args.letterbox}; output {entries['detprune.output'].split(':')[0]}")


def eval_dataset(args, adapter, model):
    """The ``--eval-data`` images (a seeded subset with ``--eval-images``), checked against the model's classes."""
    from detprune.data.loader import load_dataset
    from detprune.errors import BadInputError, UnsupportedError
    from detprune.workflow.stages import seeded_subset

    try:
        adapter.onnx_postprocess(model)  # the family's post-processing of its exported graph
    except UnsupportedError:
        raise UnsupportedError("--eval-data scores graphs whose family post-processes them (YOLO); "
                               "this model's graph has another output format") from None
    if args.eval_images is not None and args.eval_images < 1:
        raise BadInputError(f"--eval-images must be >= 1, got {args.eval_images}")
    dataset = seeded_subset(load_dataset(args.eval_data, class_map=args.class_map), args.eval_images, args.seed)
    if len(dataset) == 0:
        raise BadInputError(f"{args.eval_data}: the dataset has no images")
    names = adapter.class_names(model)
    if len(names) != len(dataset.class_names):
        raise BadInputError(
            f"{args.eval_data}: {len(dataset.class_names)} classes ({', '.join(dataset.class_names)}) but the model "
            f"predicts {len(names)}; evaluate a checkpoint trained on these classes"
        )
    return dataset


def print_accuracy(adapter, model, dataset, graphs: dict) -> dict:
    """Score each graph on ONNX Runtime with the YOLO post-processing; print them side by side."""
    from detprune.export.evaluate_onnx import evaluate_onnx, format_comparison

    postprocess = adapter.onnx_postprocess(model)
    metrics = {name: evaluate_onnx(path, dataset, postprocess) for name, path in graphs.items()}
    print(f"accuracy on {len(dataset)} image(s) of {dataset.name or 'the evaluation data'} (ONNX Runtime, CPU; "
          "every image of --eval-data, as 'detprune eval --split all'):")
    print(format_comparison(metrics))
    return metrics
