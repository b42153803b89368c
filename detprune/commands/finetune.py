"""``detprune finetune``: train a (pruned) YOLO model with the ultralytics trainer, keeping its shapes."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from detprune.commands.shared import add_loading_arguments

HELP = "fine-tune a (pruned) model keeping its pruned structure (YOLO: the ultralytics trainer; Faster R-CNN: an SGD loop)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="the (pruned) model: a .pt checkpoint (not needed with --resume)")
    parser.add_argument("--teacher", default=None, metavar="PATH",
                        help="the unpruned model to distil from (same classes and family); turns distillation on")
    parser.add_argument("--distill", action=argparse.BooleanOptionalAction, default=None,
                        help="learn from --teacher as well as from the labels (default: on when --teacher is given)")
    parser.add_argument("--distill-weight", type=float, default=None,
                        help="weight of the distillation loss (default: YOLO ultralytics' dis 6.0, Faster R-CNN 1.0)")
    add_loading_arguments(parser, weights=False)
    parser.add_argument(
        "--data", default=None,
        help="a YOLO dataset yaml, or a KITTI folder / COCO json / detprune dataset yaml, converted into OUT/dataset",
    )
    parser.add_argument("--epochs", type=int, default=None, help="epochs to train (a resumed run keeps its own)")
    parser.add_argument("--imgsz", type=int, default=None, help="training image size (default 640)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 16)")
    parser.add_argument("--device", default=None, help="cpu (default), 0, or 0,1,2,3 for DDP on several GPUs")
    parser.add_argument("--workers", type=int, default=None, help="dataloader workers per process (default: ultralytics' 8 on GPUs, 0 on CPU)")
    parser.add_argument("--lr0", type=float, default=None, help="initial learning rate (selects SGD unless --trainer-arg optimizer=...)")
    parser.add_argument("--patience", type=int, default=None, help="stop after this many epochs without improvement (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--class-weights", default=None, metavar="CLASS=W,...",
                        help="weigh each class's share of the classification loss (ultralytics' per-class BCE weights), "
                             "e.g. Pedestrian=3,Cyclist=3 or a yaml; classes not named weigh 1 (YOLO only)")
    parser.add_argument(
        "--trainer-arg", dest="trainer_args", action="append", default=None, metavar="KEY=VALUE",
        help="any other ultralytics trainer argument, e.g. mosaic=0.5 or freeze=10 (repeatable)",
    )
    parser.add_argument("--class-map", default=None, help="class map for a KITTI or COCO --data (default kitti3 / coco-traffic)")
    parser.add_argument("--val-list", default=None, metavar="FILE",
                        help="frame ids of the val split when --data is converted, one a line (# comments), e.g. KITTI's val.txt")
    parser.add_argument("--out", default="runs/finetune", help="output folder (default runs/finetune)")
    parser.add_argument("--resume", action="store_true", help="continue the unfinished run in OUT from its last.pt")
    parser.add_argument("--exist-ok", action="store_true", help="replace a previous run in OUT")
    parser.add_argument("--config", default=None, help="YAML recipe whose fields are defaults for these flags")


def _trainer_args(values) -> dict:
    """``["mosaic=0.5", "freeze=10"]`` (flags) or ``{mosaic: 0.5}`` (a recipe) as a dict of typed values."""
    import yaml

    from detprune.errors import BadInputError

    if values is None:
        return {}
    if isinstance(values, dict):
        return {str(k): v for k, v in values.items()}
    parsed = {}
    for item in values:
        key, sep, text = str(item).partition("=")
        if not sep or not key.strip():
            raise BadInputError(f"--trainer-arg {item!r}: expected KEY=VALUE, e.g. mosaic=0.5")
        try:
            parsed[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise BadInputError(f"--trainer-arg {item!r}: the value is not a number, word or list") from None
    return parsed


def _is_yolo_data_yaml(path: Path) -> bool:
    """A dataset yaml ultralytics reads as is (train/val at the top), not a detprune dataset description."""
    if path.suffix.lower() not in {".yaml", ".yml"} or not path.is_file():
        return False
    from detprune.data.yolo_format import load_yaml

    data = load_yaml(path)
    return "train" in data and "val" in data and "format" not in data


def _dataset_yaml(data: str | None, out: Path, class_map: str | None, val_list: str | None = None) -> Path | None:
    """The YOLO dataset yaml to train on: ``data`` itself, or ``data`` converted into ``out/dataset``."""
    if data is None:
        return None
    path = Path(data)
    if _is_yolo_data_yaml(path) or (path.suffix.lower() in {".yaml", ".yml"} and not path.exists()):
        if val_list is not None:
            from detprune.errors import DetpruneError

            raise DetpruneError(f"{path}: an ultralytics data yaml keeps its own val split; --val-list applies to data detprune converts")
        return path  # a missing yaml is reported by the trainer's own check
    from detprune.data.convert import write_yolo_dataset
    from detprune.data.loader import load_train_val

    train, val = load_train_val(path, class_map=class_map, val_list=val_list)
    print(f"converting {path} into {out / 'dataset'} ({len(train)} train, {len(val)} val images)")
    return write_yolo_dataset(train, val, out / "dataset")


def _load_model(spec: str, out: Path, exist_ok: bool):
    from detprune.adapters import get_adapter
    from detprune.errors import BadInputError
    from detprune.train.yolo_trainer import RUN_NAME

    path = Path(spec).resolve()
    run_dir = (out / RUN_NAME).resolve()
    if exist_ok and (path == run_dir or run_dir in path.parents):
        raise BadInputError(f"{spec}: lies inside the run folder --exist-ok would replace; choose another --out")
    adapter = get_adapter(spec)
    return adapter, adapter.load(spec)


def _teacher(args: argparse.Namespace, student):
    """The unpruned model to distil from, checked against the student; None when not distilling."""
    from detprune.errors import BadInputError
    from detprune.train.distill import check_pair, check_weight, use_distillation

    if args.resume:
        if args.teacher or args.distill is not None or args.distill_weight is not None:
            raise BadInputError("a resumed run keeps its own distillation; drop --teacher, --distill and --distill-weight")
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
    from detprune.data.loader import load_train_val
    from detprune.errors import BadInputError

    if args.resume:
        raise BadInputError("--resume continues ultralytics runs only; start the Faster R-CNN fine-tune again")
    options = {k: v for k, v in (("imgsz", args.imgsz), ("batch_size", args.batch), ("lr", args.lr0),
                                 ("device", args.device), ("seed", args.seed)) if v is not None}
    train, val = load_train_val(args.data, class_map=args.class_map, val_list=args.val_list)
    adapter.finetune(model, {"train": train, "val": val}, epochs=args.epochs, out_dir=Path(args.out), **distill, **options)
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
    from detprune.train.yolo_trainer import finetune_yolo

    out = Path(args.out)
    if not args.resume and (args.model is None or args.data is None or args.epochs is None):
        raise BadInputError("finetune needs --model, --data and --epochs (or --resume to continue a run in --out)")
    adapter, model = _load_model(args.model, out, args.exist_ok and not args.resume) if args.model else (None, None)
    teacher = _teacher(args, model)
    distill = {} if teacher is None else {"teacher": teacher, "distill_weight": args.distill_weight}
    weights = parse_class_weights(args.class_weights)
    if adapter is not None and adapter.family == "rcnn":
        if weights:
            raise BadInputError("--class-weights weigh ultralytics' loss; the Faster R-CNN loop cannot weigh classes yet")
        return _finetune_rcnn(args, adapter, model, distill)
    result = finetune_yolo(
        model,
        _dataset_yaml(args.data, out, args.class_map, args.val_list),
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
