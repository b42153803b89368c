"""``detprune eval``: COCO metrics (and KITTI AP on KITTI data) of one model on one split.

The numbers are those of ``detprune prune``'s before/after report, with the same protocol:
the same held-out split by default (``--split val``; ``--val-list`` for a team's own frames
or KITTI's standard 3712/3769 split), the same letterbox and post-processing. The model's
classes and the data's are matched by name (:mod:`detprune.data.class_match`).

Post-processing defaults, and why:

- ``--conf 0.001`` and ``--max-det 300``: ultralytics' val; AP needs the low-confidence tail
  of the precision-recall curve, which a higher threshold cuts off.
- ``--nms-iou``: the family's own, 0.7 for YOLO (ultralytics' val and predict, so a model
  scores here what ``yolo val`` gives it) and, for Faster R-CNN, the box head's own
  per-class NMS IoU (0.5 as torchvision builds it). Its region proposal NMS is not changed.
- single-label NMS (one detection a box, its best class); ``--multi-label`` is ultralytics'
  val's (one a class above ``--conf``). Faster R-CNN's box head is per-class either way.
- ``--letterbox square``: every image padded into the fixed ``imgsz`` canvas, ``imgsz x imgsz``
  or ``H x W`` with ``--imgsz H,W`` (what FLOPs and latency are measured at); ``rect`` is
  ultralytics' val rect (a 1242x375 KITTI frame at 640 becomes 672x224: the long side to 640,
  the canvas the aspect ratio plus half a stride, in strides). Parameters and FLOPs in the
  table are counted at the fixed ``imgsz`` canvas either way.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from detprune.commands.export import parse_imgsz
from detprune.commands.shared import add_loading_arguments, read_class_map, resolve_device

HELP = "evaluate a model on a dataset split: COCO mAP, AP50, AP by size and class, KITTI AP on KITTI data"


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """The post-processing and letterbox flags every evaluating command takes."""
    from detprune.defaults import EVAL_CONF, EVAL_MAX_DET, LETTERBOX_MODES

    group = parser.add_argument_group("evaluation protocol")
    group.add_argument(
        "--conf",
        type=float,
        default=EVAL_CONF,
        help=f"lowest detection confidence kept (default {EVAL_CONF}, as ultralytics' val)",
    )
    group.add_argument(
        "--nms-iou",
        type=float,
        default=None,
        help="NMS IoU (default: 0.7 for YOLO as ultralytics' val; Faster R-CNN keeps its own, 0.5)",
    )
    group.add_argument(
        "--max-det",
        type=int,
        default=EVAL_MAX_DET,
        help=f"most detections per image (default {EVAL_MAX_DET}, as ultralytics' val)",
    )
    group.add_argument(
        "--multi-label",
        action="store_true",
        help="YOLO: a box above --conf in several classes gives one detection per class, as "
        "ultralytics' val NMS (default: one, its best class); Faster R-CNN's box head already does",
    )
    group.add_argument(
        "--letterbox",
        choices=LETTERBOX_MODES,
        default="square",
        help="square: pad into the fixed imgsz canvas, imgsz x imgsz or H x W (default); "
        "rect: ultralytics' val rect batches "
        "(long side to imgsz, short side as the aspect ratio needs, in strides)",
    )
    group.add_argument(
        "--kitti-protocol", default=None, help="KITTI AP: devkit (the official devkit's numbers, default) or exact"
    )


def eval_options(args: argparse.Namespace) -> dict:
    """``adapter.evaluate`` keywords from the flags of :func:`add_eval_arguments`, checked."""
    from detprune.errors import DetpruneError

    conf, iou, max_det = getattr(args, "conf", None), getattr(args, "nms_iou", None), getattr(args, "max_det", None)
    if conf is not None and not 0 <= conf < 1:
        raise DetpruneError(f"--conf must lie in [0, 1), got {conf}")
    if iou is not None and not 0 < iou <= 1:
        raise DetpruneError(f"--nms-iou must lie in (0, 1], got {iou}")
    if max_det is not None and max_det < 1:
        raise DetpruneError(f"--max-det must be >= 1, got {max_det}")
    # multi_label only when asked for, so the records of default runs stay as they were
    options = {
        "conf": conf,
        "iou": iou,
        "max_det": max_det,
        "multi_label": True if getattr(args, "multi_label", False) else None,
        "letterbox": getattr(args, "letterbox", None),
        "kitti_protocol": getattr(args, "kitti_protocol", None),
    }
    return {k: v for k, v in options.items() if v is not None}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from detprune.defaults import DEFAULT_IMGSZ, EVAL_SPLITS

    parser.add_argument("--config", default=None, help="YAML recipe whose fields are defaults for these flags")
    parser.add_argument(
        "--model", required=True, help="a model file (pruned.pt, an ultralytics .pt, ...) or an architecture"
    )
    parser.add_argument("--weights", default=None, help="state-dict file to load into --model")
    parser.add_argument(
        "--data", required=True, help="dataset (KITTI folder, dataset yaml, YOLO folder, COCO json ...)"
    )
    parser.add_argument("--class-map", default=None, help="class map for --data (a name or a yaml file)")
    parser.add_argument(
        "--split",
        choices=EVAL_SPLITS,
        default="val",
        help="val (default: the split 'detprune prune' holds out, or --val-list's frames), train, or all images",
    )
    parser.add_argument(
        "--val-list",
        default=None,
        metavar="FILE",
        help="frame ids of the val split, one a line (# comments), e.g. KITTI's val.txt",
    )
    parser.add_argument(
        "--val-fraction", type=float, default=None, help="share held out as val when --data has no splits (default 0.2)"
    )
    parser.add_argument("--val-count", type=int, default=None, help="number of val images instead of a share")
    parser.add_argument("--seed", type=int, default=None, help="seed of the train/val split (default 0, as prune's)")
    parser.add_argument(
        "--imgsz",
        type=parse_imgsz,
        default=None,
        help=f"input size, or H,W: every image letterboxed into that canvas (e.g. 224,640, the rect "
        f"shape ultralytics trains KITTI on at 640); default: the model's training size, else "
        f"{DEFAULT_IMGSZ}, as every command",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    add_eval_arguments(parser)
    parser.add_argument(
        "--kitti-results",
        default=None,
        metavar="DIR",
        help="also write the detections as KITTI result files (one label_2 file per image, with scores)",
    )
    parser.add_argument(
        "--json", default=None, metavar="FILE", help="write the metrics as a detprune report (report.json format)"
    )
    parser.add_argument("--exist-ok", action="store_true", help="replace an existing --kitti-results folder")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    add_loading_arguments(parser, weights=True)


def run(args: argparse.Namespace) -> int:
    from detprune.adapters import get_adapter
    from detprune.data.batch import as_hw
    from detprune.data.loader import load_eval_split
    from detprune.errors import DetpruneError
    from detprune.evaluation.protocol import evaluate_detections
    from detprune.evaluation.report import ModelSummary, Report
    from detprune.pruning.pruner import conv_channels
    from detprune.utils.atomic import write_text
    from detprune.workflow.loading import load_for_data
    from detprune.workflow.imgsz import input_shape, resolve_imgsz
    from detprune.workflow.measure import model_cost
    from detprune.workflow.sources import is_kitti_source

    if (args.imgsz is not None and min(as_hw(args.imgsz)) < 32) or args.batch_size < 1:
        raise DetpruneError("--imgsz must be >= 32 and --batch-size >= 1")
    from detprune.workflow.onnx_input import refuse_onnx

    refuse_onnx(args.model, "eval")
    options = eval_options(args)
    protocol = options.pop("kitti_protocol", None)
    dataset = load_eval_split(
        args.data,
        args.split,
        val_list=args.val_list,
        class_map=read_class_map(args.class_map),
        val_fraction=args.val_fraction,
        val_count=args.val_count,
        seed=args.seed,
    )
    adapter = get_adapter(args.model)
    model, dataset = load_for_data(adapter, args.model, dataset, weights=args.weights)
    model = model.to(resolve_device(args.device)).eval()
    args.imgsz = resolve_imgsz(args.imgsz, model)
    predictions = adapter.predictions(model, dataset, imgsz=args.imgsz, batch_size=args.batch_size, **options)
    metrics = evaluate_detections(dataset, predictions, kitti_protocol=protocol, kitti=is_kitti_source(args.data))
    letterbox = options.get("letterbox", "square")
    h, w = input_shape(dataset, args.imgsz, letterbox, adapter.input_stride(model))  # what the network saw
    cost = model_cost(adapter, model, (h, w))
    settings = {
        "split": args.split,
        "val_list": args.val_list,
        "letterbox": options.get("letterbox", "square"),
        "conf": options.get("conf"),
        "nms_iou": options.get("iou", adapter.nms_iou),
        "max_det": options.get("max_det"),
        "multi_label": options.get("multi_label", False),
        "kitti_protocol": protocol,
    }
    summary = ModelSummary(
        metrics=metrics,
        params=cost.params,
        flops=cost.flops,
        channels=conv_channels(model),
        info={"model": str(args.model), "imgsz": list(as_hw(args.imgsz)), "input_shape": [h, w], **settings},
    )
    report = Report(
        {Path(str(args.model)).name: summary}, run_info={"model": str(args.model), "data": str(args.data), **settings}
    )
    iou = settings["nms_iou"] if settings["nms_iou"] is not None else "the model's own"
    canvas = (
        f"rect letterbox, long side {max(as_hw(args.imgsz))}"
        if letterbox == "rect"
        else f"letterbox into a fixed {h}x{w} canvas"
    )
    print(
        f"{len(dataset)} images of {args.data} "
        f"({args.split}{', --val-list ' + str(args.val_list) if args.val_list else ''}), "
        f"{metrics['num_objects']} objects; {h}x{w} px {canvas}, conf {settings['conf']}, "
        f"{'multi-label ' if settings['multi_label'] else ''}NMS IoU {iou}, max {settings['max_det']} detections"
    )
    print(report.to_table())
    details = report.to_detail_tables()
    if details:
        print()
        print(details)
    if args.kitti_results:
        from detprune.evaluation.kitti_results import write_kitti_results

        count = write_kitti_results(dataset, predictions, args.kitti_results, exist_ok=args.exist_ok)
        print(f"wrote {count} KITTI result files to {args.kitti_results}")
    if args.json:  # everything printed, each table with its protocol and input shape
        import json

        from detprune.workflow.printed import printed_tables

        record = {**report.to_dict(), "tables": printed_tables(report, input_shape=f"{h}x{w}", letterbox=letterbox)}
        write_text(Path(args.json), json.dumps(record, indent=2, allow_nan=False) + "\n")
        print(f"wrote {args.json}")
    return 0
