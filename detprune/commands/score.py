"""``detprune score``: a score per output channel of every prunable layer, written for the pruner.

Writes into ``--out``: ``scores.pt`` (``{conv name: float64 tensor per output channel}``,
the names the pruner sees after ``prepare_for_pruning``), ``summary.json`` (the exact
options, what was scored, per-layer statistics, top and bottom layers), ``summary.md``
and, with ``--plot``, ``plots/`` (score distributions; saliency maps over images for the
saliency criterion). The folder appears complete or not at all.
"""

from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path

from detprune.commands.outputs import check_output_folder
from detprune.commands.shared import add_loading_arguments, read_class_map, resolve_device
from detprune.commands.export import parse_imgsz
from detprune.defaults import DATA_CRITERION, DATA_FREE_CRITERION, DEFAULT_IMGSZ, LETTERBOX_MODES

HELP = "score every prunable channel (box-weighted saliency, Taylor, magnitude, ...) and write the scores"
MARKER = "scores.pt"
# flag dest -> constructor keyword; a flag given for a criterion that lacks the keyword is an error
CRITERION_FLAGS = {
    "context": "context",
    "context_scale": "context_scale",
    "background": "background",
    "normalize_boxes": "normalize_boxes",
    "overlap": "overlap",
    "utility": "utility",
    "reduction": "reduction",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="YAML recipe whose fields are defaults for these flags")
    parser.add_argument("--model", required=True, help="yolov8n.yaml, an ultralytics .pt, fasterrcnn_* ...")
    parser.add_argument(
        "--weights", default=None, help="state-dict file to load into --model (names and shapes that match)"
    )
    add_loading_arguments(parser, weights=True)
    parser.add_argument(
        "--data", default=None, help="dataset: KITTI folder, YOLO folder or yaml, dataset yaml, COCO json"
    )
    parser.add_argument("--split", default=None, help="which split of --data to score on (where it has several)")
    parser.add_argument(
        "--val-list",
        default=None,
        metavar="FILE",
        help="frame ids to leave out of scoring (the val split 'prune --val-list' and 'eval' evaluate on)",
    )
    parser.add_argument(
        "--class-map", default=None, help="KITTI: kitti3 (default) ...; COCO: coco-traffic (default), coco-all"
    )
    parser.add_argument(
        "--criterion",
        default=None,
        help=f"taylor, saliency, snip, catro, car, l1, l2, bn-scale, random ...; default as prune's: "
        f"{DATA_CRITERION} with --data, {DATA_FREE_CRITERION} without (the box options below "
        "name saliency, --reduction taylor)",
    )
    parser.add_argument(
        "--criterion-option",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="any other option of the criterion, e.g. samples_per_class=20 for catro (repeatable)",
    )
    parser.add_argument(
        "--class-weights",
        default=None,
        metavar="CLASS=W,...",
        help="class priorities of a data-driven criterion, e.g. Pedestrian=3,Cyclist=3 (or a YAML "
        "mapping file); unlisted classes weigh 1",
    )
    box = parser.add_argument_group("box-weighted saliency")
    box.add_argument("--context", type=float, default=None, help="weight of the ring around each box (default 0.5)")
    box.add_argument(
        "--context-scale", type=float, default=None, help="box growth factor bounding the ring (default 1.5)"
    )
    box.add_argument("--background", type=float, default=None, help="weight outside the grown boxes (default 0)")
    box.add_argument(
        "--no-box-norm",
        dest="normalize_boxes",
        action="store_const",
        const=False,
        default=None,
        help="weight boxes by area instead of giving each box unit mass",
    )
    box.add_argument(
        "--overlap", choices=("sum", "max"), default=None, help="how overlapping boxes combine (default sum)"
    )
    box.add_argument(
        "--utility",
        choices=("confidence", "loss"),
        default=None,
        help="what the gradient follows: GT-box confidence (default) or the negative detection loss",
    )
    taylor = parser.add_argument_group("Taylor")
    taylor.add_argument(
        "--reduction",
        choices=("squared", "abs", "group"),
        default=None,
        help="sum of (w dL/dw)^2 (default), of |w dL/dw|, or the square of the channel's sum",
    )
    parser.add_argument(
        "--imgsz",
        type=parse_imgsz,
        default=None,
        help=f"network input size, 640 or H,W (default: the model's training size, else {DEFAULT_IMGSZ})",
    )
    parser.add_argument(
        "--letterbox",
        choices=LETTERBOX_MODES,
        default="square",
        help="square: pad into the fixed imgsz canvas (default); rect: ultralytics' val rect batches",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--max-images", type=int, default=None, help="score on a seeded random subset of this many images"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the subset and of the scoring pass")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--out", default="runs/score/exp", help="output folder")
    parser.add_argument("--exist-ok", action="store_true", help="replace an output folder this command wrote before")
    parser.add_argument("--plot", action="store_true", help="also write score distributions and saliency maps")
    parser.add_argument(
        "--plot-layers", default=None, help="comma-separated layers for the saliency maps (default: 3 spread out)"
    )
    parser.add_argument("--plot-images", type=int, default=4, help="images in the saliency maps")


def run(args: argparse.Namespace) -> int:
    from detprune.adapters import get_adapter
    from detprune.criteria import get_criterion
    from detprune.errors import DetpruneError
    from detprune.workflow.imgsz import resolve_imgsz

    out = Path(args.out)
    check_output_folder(out, args.exist_ok, MARKER, "detprune score")
    if args.batch_size < 1 or (args.max_images is not None and args.max_images < 1):
        raise DetpruneError("--batch-size and --max-images must be >= 1")
    args.criterion = args.criterion or _default_criterion(args)
    criterion = _criterion(args, get_criterion)
    if criterion.needs_data and not args.data:
        raise DetpruneError(f"criterion {criterion.name!r} scores on images: give --data")

    device = resolve_device(args.device)
    dataset = _dataset(args) if args.data else None
    from detprune.workflow.criteria import check_has_objects

    check_has_objects(dataset, criterion)
    if getattr(criterion, "class_weights", None) and dataset is not None:  # before the model loads: a typo fails fast
        from detprune.criteria.class_weights import check_class_weights

        check_class_weights(criterion.class_weights, list(dataset.class_names))
    adapter = get_adapter(args.model)
    model = adapter.load(args.model, weights=args.weights, class_names=dataset.class_names if dataset else None)
    args.imgsz = resolve_imgsz(args.imgsz, model)  # the model's training size where its checkpoint has one
    model = adapter.prepare_for_pruning(model).to(device)

    batches = _batches(dataset, args) if dataset is not None else []
    scores = criterion.score(adapter, model, batches)
    stats = getattr(criterion, "last_stats", None)
    summary = _summary(args, criterion, scores, dataset, stats)
    _write(out, scores, summary, lambda folder: _plots(args, criterion, adapter, model, dataset, scores, folder))
    _print_table(summary, out)
    return 0


def _default_criterion(args: argparse.Namespace) -> str:
    """The prune run's default; a flag of one criterion's group names that criterion."""
    from detprune.workflow.config import default_criterion

    given = {dest for dest in CRITERION_FLAGS if getattr(args, dest, None) is not None}
    if given & {"context", "context_scale", "background", "normalize_boxes", "overlap", "utility"}:
        return "saliency"
    if "reduction" in given:
        return "taylor"
    return default_criterion(bool(args.data))


def _criterion(args: argparse.Namespace, get_criterion):
    """The criterion with the options given on the command line (and the seed where it takes one)."""
    from detprune.criteria.base import build_criterion, parse_options
    from detprune.errors import DetpruneError

    accepted = set(inspect.signature(type(get_criterion(args.criterion)).__init__).parameters)
    options = parse_options(args.criterion_option)
    for dest, keyword in CRITERION_FLAGS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if keyword not in accepted:
            flag = "--no-box-norm" if dest == "normalize_boxes" else "--" + dest.replace("_", "-")
            raise DetpruneError(f"{flag} does not apply to criterion {args.criterion!r}")
        options[keyword] = value
    if getattr(args, "class_weights", None) is not None:
        from detprune.criteria.class_weights import parse_class_weights

        if "class_weights" not in accepted:
            raise DetpruneError(f"--class-weights does not apply to criterion {args.criterion!r}")
        options["class_weights"] = parse_class_weights(args.class_weights)
    return build_criterion(args.criterion, options, {"seed": args.seed, "progress": True})


def _dataset(args: argparse.Namespace):
    import numpy as np

    from detprune.data.loader import load_dataset, load_train_val

    if getattr(args, "val_list", None):
        if args.split:
            from detprune.errors import DetpruneError

            raise DetpruneError("--val-list leaves its frames out of the whole set; drop --split")
        dataset, _ = load_train_val(args.data, class_map=read_class_map(args.class_map), val_list=args.val_list)
    else:
        dataset = load_dataset(args.data, class_map=read_class_map(args.class_map), split=args.split)
    if len(dataset) == 0:
        from detprune.errors import BadInputError

        raise BadInputError(f"{args.data}: the dataset has no images")
    if args.max_images is not None and args.max_images < len(dataset):
        # a seeded random subset, in dataset order: the first frames of a drive are not representative
        chosen = np.random.default_rng(args.seed).choice(len(dataset), args.max_images, replace=False)
        dataset = dataset.subset(sorted(int(i) for i in chosen))
    return dataset


class _Batches:
    """Re-iterable batches with a length, so progress bars show a total."""

    def __init__(self, dataset, imgsz, batch_size: int, letterbox: str = "square") -> None:
        self.dataset, self.imgsz, self.batch_size, self.letterbox = dataset, imgsz, batch_size, letterbox

    def __iter__(self):
        from detprune.data.batch import iter_batches

        return iter_batches(self.dataset, self.imgsz, self.batch_size, letterbox=self.letterbox)

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)


def _batches(dataset, args: argparse.Namespace) -> _Batches:
    return _Batches(dataset, args.imgsz, args.batch_size, args.letterbox)


def _layer_row(name: str, values) -> dict:
    values = values.detach().double().cpu()
    top = float(values.max()) if values.numel() else 0.0
    return {
        "layer": name,
        "channels": int(values.numel()),
        "mean": float(values.mean()) if values.numel() else 0.0,
        "max": top,
        "zeros": int((values == 0).sum()),
        "below_1pct_of_max": int((values < 0.01 * top).sum()) if top > 0 else int(values.numel()),
    }


def _summary(args, criterion, scores, dataset, stats) -> dict:
    layers = [_layer_row(name, value) for name, value in scores.items()]
    ranked = sorted(layers, key=lambda row: row["mean"], reverse=True)
    options = criterion.options() if hasattr(criterion, "options") else {}
    return {
        "criterion": criterion.name,
        "options": options,
        "model": str(args.model),
        "weights": None if args.weights is None else str(args.weights),
        "data": None if args.data is None else str(args.data),
        "split": args.split,
        "class_names": list(dataset.class_names) if dataset is not None else None,
        "images": len(dataset) if dataset is not None else 0,
        "imgsz": list(args.imgsz) if isinstance(args.imgsz, tuple) else args.imgsz,
        "letterbox": args.letterbox,
        "batch_size": args.batch_size,
        "max_images": args.max_images,
        "seed": args.seed,
        "stats": stats.as_dict() if hasattr(stats, "as_dict") else None,
        "layers": layers,
        "top_layers": [row["layer"] for row in ranked[:5]],
        "bottom_layers": [row["layer"] for row in ranked[-5:][::-1]],
        "zero_layers": [row["layer"] for row in layers if row["zeros"] == row["channels"]],
    }


def _markdown(summary: dict) -> str:
    lines = [
        f"# Channel scores: {summary['criterion']}",
        "",
        f"Model `{summary['model']}`, data `{summary['data']}`, "
        f"{summary['images']} images at {_shape(summary['imgsz'])} px "
        f"({summary['letterbox']} letterbox), "
        f"options `{json.dumps(summary['options'])}`.",
    ]
    stats = summary.get("stats")
    if stats:
        lines.append(f"Scored {stats['scored']} images; skipped {stats['skipped_without_boxes']} without object boxes.")
    if summary["zero_layers"]:
        lines.append(
            f"Layers scored 0 on every channel (no gradient reached them): {', '.join(summary['zero_layers'])}."
        )
    lines += ["", "| layer | channels | mean | max | zeros | < 1% of max |", "|---|---:|---:|---:|---:|---:|"]
    for row in summary["layers"]:
        lines.append(
            f"| {row['layer']} | {row['channels']} | {row['mean']:.3g} | {row['max']:.3g} | {row['zeros']} "
            f"| {row['below_1pct_of_max']} |"
        )
    lines += [
        "",
        "Top layers (mean score): " + ", ".join(summary["top_layers"]),
        "Bottom layers (mean score): " + ", ".join(summary["bottom_layers"]),
        "",
    ]
    return "\n".join(lines)


def _shape(imgsz) -> str:
    from detprune.workflow.config import imgsz_text

    return imgsz_text(tuple(imgsz) if isinstance(imgsz, list) else imgsz)


def _write(out: Path, scores: dict, summary: dict, plots) -> None:
    import torch

    from detprune.utils.atomic import atomic_dir

    with atomic_dir(out) as tmp:
        torch.save({name: value.detach().cpu() for name, value in scores.items()}, tmp / MARKER)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        (tmp / "summary.md").write_text(_markdown(summary))
        plots(tmp / "plots")


def _plots(args, criterion, adapter, model, dataset, scores, folder: Path) -> None:
    if not args.plot:
        return
    from detprune.criteria.plots import plot_saliency_overlays, plot_score_distributions

    plot_score_distributions(scores, folder / "score_distributions.png", title=f"{criterion.name} scores per layer")
    if criterion.name != "saliency" or dataset is None:
        return
    from detprune.criteria.saliency import images_with_objects, saliency_maps, select_images
    from detprune.data.batch import collate
    from detprune.errors import DetpruneError

    layers = [name.strip() for name in args.plot_layers.split(",")] if args.plot_layers else None
    with_boxes = [s for s in dataset.samples if s.num_objects > 0][: max(1, args.plot_images)]
    batch = collate(with_boxes, args.imgsz)
    batch = select_images(batch, images_with_objects(batch))
    if not len(batch):
        raise DetpruneError("no image with object boxes to draw saliency maps on")
    maps = saliency_maps(adapter, model, batch, layers, criterion)
    plot_saliency_overlays(maps, folder, scores=scores, layers=layers, max_images=args.plot_images)


def _print_table(summary: dict, out: Path) -> None:
    stats = summary.get("stats")
    print(
        f"scored {len(summary['layers'])} layers with {summary['criterion']}"
        + (f" on {stats['scored']} images ({stats['skipped_without_boxes']} without boxes skipped)" if stats else "")
    )
    width = max((len(r["layer"]) for r in summary["layers"]), default=5)
    print(f"{'layer':<{width}}  {'ch':>5}  {'mean':>10}  {'max':>10}  {'zeros':>5}")
    rows = {r["layer"]: r for r in summary["layers"]}
    for title, names in (("top", summary["top_layers"]), ("bottom", summary["bottom_layers"])):
        print(f"-- {title} layers")
        for name in names:
            r = rows[name]
            print(f"{name:<{width}}  {r['channels']:>5}  {r['mean']:>10.3g}  {r['max']:>10.3g}  {r['zeros']:>5}")
    if summary["zero_layers"]:
        print(
            f"warning: {len(summary['zero_layers'])} layer(s) scored 0 on every channel: "
            f"{', '.join(summary['zero_layers'][:6])}" + (" ..." if len(summary["zero_layers"]) > 6 else "")
        )
    print(f"wrote {out / MARKER}, {out / 'summary.json'}")
