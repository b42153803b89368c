"""``detprune train``: train an unpruned YOLO baseline for a dataset's classes, the model ``prune`` then cuts."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from detprune.commands.finetune import _dataset_yaml, _trainer_args
from detprune.commands.export import parse_imgsz
from detprune.commands.shared import add_loading_arguments
from detprune.defaults import DEFAULT_IMGSZ

HELP = ("train an unpruned YOLO baseline on your data (an architecture yaml, optionally with --weights, "
        "or a trained .pt, re-headed when its classes differ)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default="yolov8n.yaml",
        help="an ultralytics architecture yaml or name (built for the data's classes), or a trained YOLO .pt "
             "(a different class count gets new class predictors, said in one line); default yolov8n.yaml",
    )
    parser.add_argument(
        "--weights", default=None, metavar="PATH",
        help="a local state-dict file for a yaml --model, matched by name and shape (e.g. a COCO backbone and neck)",
    )
    add_loading_arguments(parser, weights=True)
    parser.set_defaults(random_init=True)  # a yaml without weights is a from-scratch baseline: what train is for
    parser.add_argument(
        "--data",
        default=None,
        help="a YOLO dataset yaml, or a KITTI folder / COCO json / detprune dataset yaml, converted into OUT/dataset",
    )
    parser.add_argument("--epochs", type=int, default=None, help="epochs to train")
    parser.add_argument("--imgsz", type=parse_imgsz, default=None,
                        help=f"training image size, 640 or H,W (ultralytics trains at the long side; default: the "
                             f"model's own training size, else {DEFAULT_IMGSZ}, as every command)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 16)")
    parser.add_argument("--device", default=None, help="cpu (default), 0, or 0,1,2,3 for DDP on several GPUs")
    parser.add_argument("--workers", type=int, default=None, help="dataloader workers per process")
    parser.add_argument(
        "--lr0", type=float, default=None, help="initial learning rate (selects SGD unless --trainer-arg optimizer=...)"
    )
    parser.add_argument(
        "--patience", type=int, default=None, help="stop after this many epochs without improvement (default 100)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the fresh layers' initialisation and of training")
    parser.add_argument("--trainer-arg", dest="trainer_args", action="append", default=None, metavar="KEY=VALUE",
                        help="any other ultralytics trainer argument, e.g. mosaic=0.5 (repeatable)")
    parser.add_argument(
        "--class-map", default=None, help="class map for a KITTI or COCO --data (default kitti3 / coco-traffic)"
    )
    parser.add_argument("--val-list", default=None, metavar="FILE",
                        help="frame ids of the val split when --data is converted, one a line (# comments)")
    parser.add_argument("--val-data", default=None, metavar="DATA",
                        help="a separate validation folder or yaml (converted with --data into OUT/dataset); --data "
                             "is then all train")
    parser.add_argument("--train-list", default=None, metavar="FILE",
                        help="frame ids of --data to train on, one a line (# comments); the rest (or --val-list's, or "
                             "--val-data) is val")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of this run (default: torch's, the cores this process may use)")
    parser.add_argument(
        "--out", default="runs/train", help="output folder (default runs/train); the model is OUT/train/weights/best.pt"
    )
    parser.add_argument("--exist-ok", action="store_true", help="replace a previous run in OUT")
    parser.add_argument("--config", default=None, help="YAML recipe whose fields are defaults for these flags")


def run(args: argparse.Namespace) -> int:
    if os.environ.get("DETPRUNE_QUIET") != "1":
        os.environ["YOLO_VERBOSE"] = "True"  # ultralytics' epoch table is this command's progress display
    from detprune.adapters import get_adapter
    from detprune.errors import BadInputError
    from detprune.data.batch import train_side
    from detprune.workflow.imgsz import imgsz_source, resolve_imgsz

    if args.data is None or args.epochs is None:
        raise BadInputError("train needs --data and --epochs")
    adapter = get_adapter(args.model)
    if not adapter.resumes_runs:  # a family with a run folder of its own trains here; the others fine-tune
        raise BadInputError(
            f"{args.model}: 'detprune train' trains YOLO models; fine-tune a Faster R-CNN with 'detprune finetune'"
        )
    out = Path(args.out)
    data_yaml = _dataset_yaml(args.data, out, args.class_map, args.val_list, args.val_data, args.train_list)
    names = adapter.data_class_names(data_yaml)
    model = adapter.load(args.model, weights=args.weights, class_names=names, init_seed=args.seed)
    imgsz = train_side(resolve_imgsz(args.imgsz, model))
    print(f"training {args.model} for {len(names)} classes: {', '.join(names)}, at {imgsz} px "
          f"({imgsz_source(args.imgsz, model)})")
    result = adapter.train_run(
        model, data_yaml, epochs=args.epochs, out_dir=out, imgsz=imgsz, batch=args.batch, device=args.device,
        workers=args.workers, lr0=args.lr0, exist_ok=args.exist_ok, seed=args.seed, patience=args.patience,
        progress_label="train epochs", **_trainer_args(args.trainer_args),
    )
    print(f"\ntrained model: {result.best}   (prune it: detprune prune --model {result.best} ...)")
    print(f"               best.pt is the epoch that scored best on the val frames (picked by them, so its val score "
          f"is optimistic); last.pt beside it, {result.last}, is the last epoch, which no score picked and "
          "docs/benchmarks.md reports")
    print(f"time:          {result.seconds:.1f} s")
    for key, value in (result.metrics or {}).items():
        print(f"  {key}  {value:.4f}")
    return 0
