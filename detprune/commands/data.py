"""``detprune data convert|stats|synth``: datasets in, the files trainers and evaluators read out."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from detprune.commands.outputs import check_output_folder
from detprune.commands.shared import read_class_map

HELP = "convert datasets (KITTI, COCO, YOLO) for training and evaluation, summarise them, synthesise scenes"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION")
    actions.required = True

    convert = actions.add_parser("convert", help="write a YOLO dataset (for training) or COCO ground truth")
    convert.add_argument("src", help="KITTI folder, YOLO folder or data yaml, dataset yaml, or COCO json")
    convert.add_argument("--to", required=True, choices=("yolo", "coco"), help="output format")
    convert.add_argument("--out", required=True, help="output folder")
    convert.add_argument(
        "--val-fraction", type=float, default=None, help="share of images for val when SRC has no splits (default 0.2)"
    )
    convert.add_argument("--val-count", type=int, default=None, help="number of val images instead of a fraction")
    convert.add_argument(
        "--val-list",
        default=None,
        metavar="FILE",
        help="frame ids of the val split, one a line (# comments); the rest is train. Listing every "
        "image (or --val-count of all) writes an evaluation-only set with an empty train split",
    )
    convert.add_argument(
        "--val-data",
        default=None,
        metavar="DATA",
        help="a separate validation set (folder or yaml), written as val; SRC is then all train",
    )
    convert.add_argument(
        "--train-list",
        default=None,
        metavar="FILE",
        help="frame ids of SRC to train on, one a line (# comments); the rest (or --val-list's, or "
        "--val-data) is val",
    )
    convert.add_argument("--seed", type=int, default=None, help="seed of the train/val split (default 0)")
    convert.add_argument("--split", default=None, help="convert only this split of SRC (COCO output)")
    _common(convert)
    convert.add_argument("--copy", action="store_true", help="copy images instead of linking to them")
    convert.add_argument("--exist-ok", action="store_true", help="replace an output folder this command wrote before")

    stats = actions.add_parser("stats", help="objects per class and size, boxes per image, a size histogram")
    stats.add_argument("src", help="KITTI folder, YOLO folder or data yaml, dataset yaml, or COCO json")
    stats.add_argument("--split", default=None, help="which split of SRC (where it has several)")
    _common(stats)
    stats.add_argument("--plot", default=None, metavar="PNG", help="write histograms of box sizes per class")
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")

    synth = actions.add_parser("synth", help="generate synthetic driving scenes as a KITTI folder")
    synth.add_argument("out", help="output folder (image_2/, label_2/)")
    synth.add_argument("--num-images", type=int, default=100)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--width", type=int, default=1242)
    synth.add_argument("--height", type=int, default=375)
    synth.add_argument("--exist-ok", action="store_true", help="replace a synthetic set written before")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--class-map",
        default=None,
        help="KITTI: kitti3 (default), kitti3-merged, kitti8 or a yaml mapping file; "
        "COCO: coco-traffic (default), coco-all",
    )
    parser.add_argument(
        "--skip-bad", action="store_true", help="leave out bad lines and images (counted) instead of failing"
    )


def run(args: argparse.Namespace) -> int:
    return {"convert": _convert, "stats": _stats, "synth": _synth}[args.data_command](args)


def _skipped_note(*datasets) -> None:
    from collections import Counter

    total: Counter[str] = Counter()
    reads = {id(d.skipped): d.skipped for d in datasets}  # train and val of one read share theirs
    for skipped in reads.values():
        total.update(skipped)
    if total:
        print("skipped bad inputs: " + ", ".join(f"{n} {kind}" for kind, n in sorted(total.items())))


def _convert(args: argparse.Namespace) -> int:
    from detprune.data.convert import DATA_YAML, write_coco_dataset, write_yolo_dataset
    from detprune.data.loader import load_dataset
    from detprune.errors import DetpruneError
    from detprune.workflow.datasets import train_val_sets

    src, out = Path(args.src), Path(args.out)
    check_output_folder(
        out, args.exist_ok, DATA_YAML if args.to == "yolo" else "annotations", "detprune data convert", src
    )
    class_map = read_class_map(args.class_map)
    if args.split:
        if args.to == "yolo":
            raise DetpruneError("--split converts one split, but a YOLO dataset needs train and val; drop --split")
        if args.val_data or args.train_list:
            raise DetpruneError("--split converts one split of SRC; --val-data and --train-list make two")
        dataset = load_dataset(src, class_map=class_map, skip_bad=args.skip_bad, split=args.split)
        written = write_coco_dataset({args.split: dataset}, out, link=not args.copy)
        _skipped_note(dataset)
        print(f"wrote {written}/instances_{args.split}.json: {len(dataset)} images, {_objects(dataset)} objects")
        return 0
    train, val = train_val_sets(
        src,
        val_data=args.val_data,
        train_list=args.train_list,
        class_map=class_map,
        skip_bad=args.skip_bad,
        val_fraction=args.val_fraction,
        val_count=args.val_count,
        seed=args.seed,
        val_list=args.val_list,
        allow_empty_train=True,
    )
    if args.to == "yolo":
        written = write_yolo_dataset(train, val, out, link=not args.copy)
    else:
        splits = {"train": train, "val": val} if len(train) else {"val": val}
        written = write_coco_dataset(splits, out, link=not args.copy)
    if not len(train):
        print("train split empty: an evaluation-only set (ultralytics' val and 'detprune eval' read its val split)")
    _skipped_note(train, val)
    print(
        f"wrote {written}: train {len(train)} images / {_objects(train)} objects, "
        f"val {len(val)} images / {_objects(val)} objects; classes: {', '.join(train.class_names)}"
    )
    return 0


def _objects(dataset) -> int:
    return sum(sample.num_objects for sample in dataset)


def _stats(args: argparse.Namespace) -> int:
    from detprune.data.loader import load_dataset
    from detprune.data.stats import dataset_stats, format_stats, plot_stats

    dataset = load_dataset(args.src, class_map=read_class_map(args.class_map), skip_bad=args.skip_bad, split=args.split)
    stats = dataset_stats(dataset)
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
    if args.plot:
        path = plot_stats(dataset, args.plot)
        if not args.json:
            print(f"histograms: {path}")
    return 0


def _synth(args: argparse.Namespace) -> int:
    from detprune.data.synthetic import generate_scenes

    out = Path(args.out)
    check_output_folder(out, args.exist_ok, "synthetic.json", "detprune data synth")
    root = generate_scenes(
        out, args.num_images, seed=args.seed, width=args.width, height=args.height, exist_ok=args.exist_ok
    )
    print(f"wrote {args.num_images} scenes ({args.width}x{args.height}, seed {args.seed}) to {root}")
    return 0
