"""``detprune finetune``: train a (pruned) YOLO model with the ultralytics trainer, keeping its shapes."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from detprune.commands.export import parse_imgsz
from detprune.commands.shared import add_loading_arguments
from detprune.workflow.trainer_args import parse_trainer_args as _trainer_args
from detprune.defaults import DEFAULT_IMGSZ

HELP = (
    "fine-tune a (pruned) model keeping its pruned structure (YOLO: the ultralytics trainer; Faster R-CNN: an SGD loop)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="the (pruned) model: a .pt checkpoint (not needed with --resume)")
    parser.add_argument("--teacher", default=None, metavar="PATH",
                        help="the unpruned model to distil from (same classes and family); turns distillation on")
    parser.add_argument("--distill", action=argparse.BooleanOptionalAction, default=None,
                        help="learn from --teacher as well as from the labels (default: on when --teacher is given)")
    parser.add_argument("--distill-weight", type=float, default=None,
                        help="weight of the distillation loss (default: YOLO 2.0, chosen on the KITTI benchmark's "
                        "tuning split; Faster R-CNN 1.0)")
    add_loading_arguments(parser, weights=False)
    parser.add_argument(
        "--data", default=None,
        help="a YOLO dataset yaml, or a KITTI folder / COCO json / detprune dataset yaml, converted into OUT/dataset",
    )
    parser.add_argument("--epochs", type=int, default=None, help="epochs to train (a resumed run keeps its own)")
    parser.add_argument("--imgsz", type=parse_imgsz, default=None,
                        help=f"training image size, 640 or H,W (ultralytics trains at the long side; default: the "
                             f"model's own training size, else {DEFAULT_IMGSZ}, as every command)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 16)")
    parser.add_argument("--device", default=None, help="cpu (default), 0, or 0,1,2,3 for DDP on several GPUs")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="dataloader workers per process (default: ultralytics' 8 on GPUs, 0 on CPU)",
    )
    parser.add_argument(
        "--lr0", type=float, default=None, help="initial learning rate (selects SGD unless --trainer-arg optimizer=...)"
    )
    parser.add_argument(
        "--patience", type=int, default=None, help="stop after this many epochs without improvement (default 100)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--class-weights",
        default=None,
        metavar="CLASS=W,...",
        help="weigh each class's share of the classification loss (ultralytics' per-class BCE weights), "
        "e.g. Pedestrian=3,Cyclist=3 or a yaml; classes not named weigh 1 (YOLO only)",
    )
    parser.add_argument(
        "--trainer-arg", dest="trainer_args", action="append", default=None, metavar="KEY=VALUE",
        help="any other ultralytics trainer argument, e.g. mosaic=0.5 or freeze=10 (repeatable)",
    )
    parser.add_argument(
        "--class-map", default=None, help="class map for a KITTI or COCO --data (default kitti3 / coco-traffic)"
    )
    parser.add_argument(
        "--val-list",
        default=None,
        metavar="FILE",
        help="frame ids of the val split when --data is converted, one a line (# comments), e.g. KITTI's val.txt",
    )
    parser.add_argument("--val-data", default=None, metavar="DATA",
                        help="a separate validation folder or yaml (converted with --data into OUT/dataset); --data "
                             "is then all train")
    parser.add_argument("--train-list", default=None, metavar="FILE",
                        help="frame ids of --data to train on, one a line (# comments); the rest (or --val-list's, or "
                             "--val-data) is val")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of this run (default: torch's, the cores this process may use)")
    parser.add_argument("--out", default="runs/finetune", help="output folder (default runs/finetune)")
    parser.add_argument("--resume", action="store_true", help="continue the unfinished run in OUT from its last.pt")
    parser.add_argument("--exist-ok", action="store_true", help="replace a previous run in OUT")
    parser.add_argument("--config", default=None, help="YAML recipe whose fields are defaults for these flags")


def _is_yolo_data_yaml(path: Path) -> bool:
    """A dataset yaml ultralytics reads as is (train/val at the top), not a detprune dataset description."""
    if path.suffix.lower() not in {".yaml", ".yml"} or not path.is_file():
        return False
    from detprune.data.yolo_format import load_yaml

    data = load_yaml(path)
    return "train" in data and "val" in data and "format" not in data


def _dataset_yaml(data: str | None, out: Path, class_map: str | None, val_list: str | None = None,
                  val_data: str | None = None, train_list: str | None = None) -> Path | None:
    """The YOLO dataset yaml to train on: ``data`` itself, or ``data`` (and ``val_data``, or the
    frames of ``train_list``) converted into ``out/dataset``."""
    if data is None:
        return None
    path = Path(data)
    own_split = val_list is None and val_data is None and train_list is None
    if _is_yolo_data_yaml(path) and own_split or (path.suffix.lower() in {".yaml", ".yml"} and not path.exists()):
        return path  # a missing yaml is reported by the trainer's own check
    from detprune.data.convert import write_yolo_dataset
    from detprune.workflow.datasets import train_val_sets

    train, val = train_val_sets(path, val_data=val_data, train_list=train_list, val_list=val_list, class_map=class_map)
    print(f"converting {path} into {out / 'dataset'} ({len(train)} train, {len(val)} val images)")
    return write_yolo_dataset(train, val, out / "dataset")


def _load_model(spec: str, out: Path, exist_ok: bool):
    from detprune.adapters import get_adapter
    from detprune.errors import BadInputError

    adapter = get_adapter(spec)
    path = Path(spec).resolve()
    run_dir = (out / adapter.run_name).resolve() if adapter.run_name else out.resolve()
    if exist_ok and (path == run_dir or run_dir in path.parents):
        raise BadInputError(f"{spec}: lies inside the run folder --exist-ok would replace; choose another --out")
    return adapter, adapter.load(spec)


def _teacher(args: argparse.Namespace, student):
    """The unpruned model to distil from, checked against the student; None when not distilling."""
    from detprune.errors import BadInputError
    from detprune.train.distill import check_pair, check_weight, use_distillation

    if args.resume:
        if args.teacher or args.distill is not None or args.distill_weight is not None:
            raise BadInputError(
                "a resumed run keeps its own distillation; drop --teacher, --distill and --distill-weight"
            )
        return None
    check_weight(args.distill_weight)
    if not use_distillation(args.distill, bool(args.teacher), "no --teacher PATH was given"):
        if args.distill_weight is not None:
            raise BadInputError("--distill-weight needs distillation: give --teacher PATH (and no --no-distill)")
        return None
    from detprune.adapters import get_adapter

    teacher = get_adapter(args.teacher).load(args.teacher)
    check_pair(teacher, student)
    weight = "" if args.distill_weight is None else f", weight {args.distill_weight:g}"
    print(f"distilling from {args.teacher}{weight}")
    return teacher


def _finetune_rcnn(args: argparse.Namespace, adapter, model, distill: dict) -> int:
    """Faster R-CNN: detprune's SGD loop on the dataset's train/val splits (writes best.pt, last.pt)."""
    from detprune.errors import BadInputError
    from detprune.workflow.datasets import train_val_sets

    if args.resume:
        raise BadInputError("--resume continues ultralytics runs only; start the Faster R-CNN fine-tune again")
    options = {k: v for k, v in (("imgsz", args.imgsz), ("batch_size", args.batch), ("lr", args.lr0),
                                 ("device", args.device), ("seed", args.seed)) if v is not None}
    train, val = train_val_sets(args.data, val_data=args.val_data, train_list=args.train_list, val_list=args.val_list,
                                class_map=args.class_map)
    adapter.finetune(
        model, {"train": train, "val": val}, epochs=args.epochs, out_dir=Path(args.out), **distill, **options
    )
    print(f"\nfine-tuned model: {Path(args.out) / 'best.pt'}")
    return 0


def _print_summary(result) -> None:
    print(f"\nfine-tuned model: {result.best}")
    print(f"last epoch:       {result.last}")
    print(f"time:             {result.seconds:.1f} s")
    if result.metrics:
        width = max(len(k) for k in result.metrics)
        print("metrics of the best model:")
        for key, value in result.metrics.items():
            print(f"  {key:<{width}}  {value:.4f}")


def run(args: argparse.Namespace) -> int:
    if os.environ.get("DETPRUNE_QUIET") != "1":
        os.environ["YOLO_VERBOSE"] = "True"  # ultralytics' epoch table is this command's progress display
    from detprune.errors import BadInputError
    from detprune.criteria.class_weights import parse_class_weights
    from detprune.adapters import resuming_adapter
    from detprune.data.batch import train_side
    from detprune.workflow.imgsz import resolve_imgsz

    out = Path(args.out)
    if not args.resume and (args.model is None or args.data is None or args.epochs is None):
        raise BadInputError("finetune needs --model, --data and --epochs (or --resume to continue a run in --out)")
    adapter, model = _load_model(args.model, out, args.exist_ok and not args.resume) if args.model else (None, None)
    if model is not None and not args.resume:  # a resumed run keeps its own size unless one is given
        args.imgsz = resolve_imgsz(args.imgsz, model)
    if args.imgsz is not None and (adapter is None or adapter.resumes_runs):
        args.imgsz = train_side(args.imgsz)  # ultralytics trains at one size: the long side
    teacher = _teacher(args, model)
    distill = {} if teacher is None else {"teacher": teacher, "distill_weight": args.distill_weight}
    weights = parse_class_weights(args.class_weights)
    if adapter is not None and not adapter.resumes_runs:  # a family that fine-tunes in its own loop
        if weights:
            raise BadInputError(
                "--class-weights weigh ultralytics' loss; the Faster R-CNN loop cannot weigh classes yet"
            )
        return _finetune_rcnn(args, adapter, model, distill)
    trainer = adapter if adapter is not None else resuming_adapter()  # --resume alone: the family that resumes
    result = trainer.train_run(
        model,
        _dataset_yaml(args.data, out, args.class_map, args.val_list, args.val_data, args.train_list),
        epochs=args.epochs,
        out_dir=out,
        imgsz=args.imgsz,
        batch=args.batch,
        device=args.device,
        workers=args.workers,
        lr0=args.lr0,
        resume=args.resume,
        exist_ok=args.exist_ok,
        seed=args.seed,
        patience=args.patience,
        class_weights=weights or None,
        **distill,
        **_trainer_args(args.trainer_args),
    )
    _print_summary(result)
    return 0
