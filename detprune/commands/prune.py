"""``detprune prune``: score the channels, cut the model to a target, write the smaller model.

A run is a sequence of stages over one :class:`PruneRun` (:data:`STAGES`): load the model
(and the data, where the criterion needs images), score, prune, write. Each stage reads what
the earlier ones left and adds its own; further stages (fine-tune, evaluate) slot in the
same way. Everything is written into a temporary folder that replaces ``--out`` only when
every stage has succeeded.

Files in ``--out``: ``pruned.pt`` (the adapter's checkpoint of the pruned model),
``prune.json`` (params and FLOPs before/after, target and result, the removed channels per
group, timings, versions), ``channels.csv`` / ``channels.json`` (output channels per layer
before/after), ``channels.png``, ``scores.pt`` (the scores used) and ``config.yaml`` (every
option of the run; ``--config`` reads it back).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

HELP = "prune a detector's channels to a FLOPs, parameter or channel target and write the smaller model"
MARKER = "pruned.pt"
TARGET_FLAGS = ("target_flops", "target_params", "ratio")
# options that describe how a run writes, not what it computes: left out of config.yaml
_NOT_RECORDED = {"config", "exist_ok", "help"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="YAML recipe whose fields are defaults for these flags")
    parser.add_argument("--model", required=True, help="yolov8n.yaml, an ultralytics .pt, ...")
    parser.add_argument("--weights", default=None, help="state-dict file to load into --model (names and shapes that match)")
    parser.add_argument("--data", default=None, help="dataset (KITTI folder, dataset yaml, ...); only criteria that score on images need it")
    parser.add_argument("--split", default=None, help="which split of --data to score on (where it has several)")
    parser.add_argument("--class-map", default=None, help="class map for a KITTI or COCO --data")
    scoring = parser.add_argument_group("scoring")
    scoring.add_argument("--criterion", default="magnitude", help="magnitude (= l1, default), l2, bn-scale, random, saliency, taylor ...")
    scoring.add_argument("--scores", default=None, help="a scores.pt written by 'detprune score', used instead of --criterion")
    scoring.add_argument("--batch-size", type=int, default=8, help="batch size of data-driven scoring")
    scoring.add_argument("--max-images", type=int, default=None, help="score on a seeded random subset of this many images")
    target = parser.add_argument_group("target (give one)")
    target.add_argument("--target-flops", type=float, default=None, help="fraction of the FLOPs to KEEP, e.g. 0.5")
    target.add_argument("--target-params", type=float, default=None, help="fraction of the parameters to KEEP")
    target.add_argument("--ratio", type=float, default=None, help="fraction of the prunable channels to REMOVE")
    limits = parser.add_argument_group("allocation")
    limits.add_argument("--per-layer", action="store_true", default=False,
                        help="remove the same fraction from every group instead of one global ranking")
    limits.add_argument("--round-to", type=int, default=8, help="kept channels are a multiple of this: 8 (default), 16, 32; 1 = any")
    limits.add_argument("--min-channels", type=int, default=8, help="no group keeps fewer channels (default 8)")
    limits.add_argument("--max-ratio", type=float, default=0.8, help="no group loses more than this fraction (default 0.8)")
    limits.add_argument("--normalisation", choices=("l2", "l1", "max", "mean", "none"), default="l2",
                        help="per-layer score normalisation before the global ranking (default l2; "
                             "l2/l1 cut wide layers first, max/mean spread the cut)")
    parser.add_argument("--imgsz", type=int, default=320, help="input size the FLOPs are counted at (and images scored at)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random criterion and of the image subset")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... for scoring and pruning (default: cuda when available)")
    parser.add_argument("--out", default="runs/prune/exp", help="output folder (default runs/prune/exp)")
    parser.add_argument("--exist-ok", action="store_true", help="replace an output folder an earlier 'detprune prune' wrote")


@dataclass
class PruneRun:
    """What the stages share: the options, then what each stage adds."""

    args: argparse.Namespace
    folder: Path  # where files go (a temporary folder until the run succeeds)
    adapter: Any = None
    model: Any = None
    dataset: Any = None
    criterion: Any = None
    scores: dict = field(default_factory=dict)
    result: Any = None
    report: dict = field(default_factory=dict)


def run(args: argparse.Namespace) -> int:
    from detprune.utils.atomic import atomic_dir

    _pick_target(args)
    _validate(args)
    out = Path(args.out)
    _check_out(out, args.exist_ok)
    with atomic_dir(out) as tmp:
        state = PruneRun(args, tmp)
        for stage in STAGES:
            stage(state)
    _print_summary(state, out)
    return 0


# --- checks ---------------------------------------------------------------------------------


def _pick_target(args: argparse.Namespace) -> None:
    """A target flag given on the command line replaces the recipe's target of another kind."""
    given = [k for k in TARGET_FLAGS if getattr(args, k) is not None]
    parser = getattr(args, "_parser", None)
    if len(given) > 1 and parser is not None:
        from_flags = [k for k in given if getattr(args, k) != parser.get_default(k)]
        if len(from_flags) == 1:
            for k in given:
                if k != from_flags[0]:
                    setattr(args, k, None)


def _validate(args: argparse.Namespace) -> None:
    from detprune.errors import DetpruneError
    from detprune.pruning.targets import make_target

    flags = {"target_flops": "--target-flops", "target_params": "--target-params", "ratio": "--ratio"}
    given = [flags[k] for k in TARGET_FLAGS if getattr(args, k) is not None]
    if len(given) != 1:
        raise DetpruneError("give one target: --target-flops, --target-params or --ratio" + (f" (got {' and '.join(given)})" if given else ""))
    try:
        make_target(ratio=args.ratio, target_flops=args.target_flops, target_params=args.target_params, strict=True)
    except DetpruneError as err:
        for k, flag in flags.items():
            if str(err).startswith(k + " "):
                raise DetpruneError(flag + str(err)[len(k):]) from None
        raise
    if args.round_to < 1:
        raise DetpruneError(f"--round-to must be >= 1 (1 = no rounding), got {args.round_to}")
    if args.min_channels < 1:
        raise DetpruneError(f"--min-channels must be >= 1, got {args.min_channels}")
    if not 0 < args.max_ratio < 1:
        raise DetpruneError(f"--max-ratio must lie in (0, 1), got {args.max_ratio}")
    if args.imgsz < 32 or args.batch_size < 1 or (args.max_images is not None and args.max_images < 1):
        raise DetpruneError("--imgsz must be >= 32, --batch-size and --max-images >= 1")


def _check_out(out: Path, exist_ok: bool) -> None:
    from detprune.errors import DetpruneError

    if not out.exists():
        return
    if not exist_ok:
        raise DetpruneError(f"{out}: already exists; choose another --out or pass --exist-ok")
    if not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).exists()):
        raise DetpruneError(f"{out}: exists and was not written by 'detprune prune' (no {MARKER}); refusing to replace it")


# --- stages ---------------------------------------------------------------------------------


def load_stage(state: PruneRun) -> None:
    """The adapter, the model prepared for pruning, the dataset where one is given."""
    from detprune.adapters import get_adapter
    from detprune.errors import DetpruneError

    args = state.args
    if args.scores is None:
        state.criterion = _criterion(args)
        if state.criterion.needs_data and not args.data:
            raise DetpruneError(f"criterion {args.criterion!r} scores on images: give --data (or --scores from 'detprune score')")
    state.dataset = _dataset(args) if args.data else None
    state.adapter = get_adapter(args.model)
    names = state.dataset.class_names if state.dataset is not None else None
    model = state.adapter.load(args.model, weights=args.weights, class_names=names)
    state.model = state.adapter.prepare_for_pruning(model).to(_device(args))


def score_stage(state: PruneRun) -> None:
    """Scores from the criterion, or read from ``--scores``."""
    import torch

    from detprune.errors import BadInputError
    from detprune.utils.progress import progress_bar

    args = state.args
    if args.scores is not None:
        path = Path(args.scores)
        if not path.is_file():
            raise BadInputError(f"{path}: scores file not found")
        try:
            scores = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise BadInputError(f"{path}: not a scores file ({type(exc).__name__})") from None
        if not isinstance(scores, dict) or not all(isinstance(v, torch.Tensor) for v in scores.values()):
            raise BadInputError(f"{path}: expected {{layer name: tensor}} as 'detprune score' writes")
        state.scores = dict(scores)
    else:
        batches = []
        if state.criterion.needs_data:
            from detprune.data.batch import iter_batches

            total = -(-len(state.dataset) // args.batch_size)
            batches = progress_bar(iter_batches(state.dataset, args.imgsz, args.batch_size), total=total, desc="score")
        state.scores = state.criterion.score(state.adapter, state.model, batches)
    torch.save({k: v.detach().cpu() for k, v in state.scores.items()}, state.folder / "scores.pt")


def prune_stage(state: PruneRun) -> None:
    from detprune.pruning import prune_model

    args = state.args
    state.result = prune_model(
        state.adapter,
        state.model,
        state.scores,
        target_flops=args.target_flops,
        target_params=args.target_params,
        ratio=args.ratio,
        global_ranking=not args.per_layer,
        round_to=args.round_to,
        min_channels=args.min_channels,
        max_ratio=args.max_ratio,
        normalisation=args.normalisation,
        imgsz=args.imgsz,
    )


def write_stage(state: PruneRun) -> None:
    """pruned.pt, prune.json, channels.csv/json/png, config.yaml (scores.pt is the score stage's)."""
    import yaml

    from detprune.pruning.plots import plot_channels

    args, result, folder = state.args, state.result, state.folder
    state.report = _report(state)
    state.model = state.model.cpu()  # a checkpoint that loads on machines without a GPU
    state.adapter.save(state.model, folder / MARKER, meta={"prune": {k: v for k, v in state.report.items() if k != "removed"}})
    (folder / "prune.json").write_text(_json(state.report))
    channels = {n: {"before": b, "after": result.channels_after.get(n, 0)} for n, b in result.channels_before.items()}
    (folder / "channels.json").write_text(_json(channels))
    rows = ["layer,before,after,removed"] + [f"{n},{c['before']},{c['after']},{c['before'] - c['after']}" for n, c in channels.items()]
    (folder / "channels.csv").write_text("\n".join(rows) + "\n")
    plot_channels(result.channels_before, result.channels_after, folder / "channels.png", title=f"{Path(str(args.model)).name} pruned")
    (folder / "config.yaml").write_text(yaml.safe_dump(recorded_config(args), sort_keys=False))


STAGES: tuple[Callable[[PruneRun], None], ...] = (load_stage, score_stage, prune_stage, write_stage)


# --- helpers --------------------------------------------------------------------------------


def _device(args: argparse.Namespace):
    import torch

    from detprune.errors import DetpruneError

    try:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        raise DetpruneError(f"--device {args.device!r}: not a device name (cpu, cuda, cuda:1 ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DetpruneError(f"--device {args.device}: CUDA is not available on this machine; use --device cpu")
    return device


def _criterion(args: argparse.Namespace):
    import inspect

    from detprune.criteria import get_criterion

    cls = type(get_criterion(args.criterion))
    accepted = set(inspect.signature(cls.__init__).parameters)
    options = {k: v for k, v in (("seed", args.seed), ("progress", True)) if k in accepted}
    return get_criterion(args.criterion, **options)


def _dataset(args: argparse.Namespace):
    import numpy as np

    from detprune.data.loader import load_dataset
    from detprune.errors import BadInputError

    class_map = args.class_map
    if class_map is not None and str(class_map).endswith((".yaml", ".yml")):
        from detprune.data.yolo_format import load_yaml

        class_map = load_yaml(Path(class_map))
    dataset = load_dataset(args.data, class_map=class_map, split=args.split)
    if len(dataset) == 0:
        raise BadInputError(f"{args.data}: the dataset has no images")
    if args.max_images is not None and args.max_images < len(dataset):
        chosen = np.random.default_rng(args.seed).choice(len(dataset), args.max_images, replace=False)
        dataset = dataset.subset(sorted(int(i) for i in chosen))
    return dataset


def _json(data) -> str:
    """Indented JSON with lists of numbers kept on one line (channel index lists are long)."""
    import json
    import re

    text = json.dumps(data, indent=2)
    return re.sub(r"\[[-\d.,\s]*\]", lambda m: json.dumps(json.loads(m.group(0))), text) + "\n"


def recorded_config(args: argparse.Namespace) -> dict:
    """Every option of the run by its recipe name, in the parser's order."""
    parser = args._parser
    dests = [a.dest for a in parser._actions if a.dest not in _NOT_RECORDED]
    return {d: (str(v) if isinstance(v := getattr(args, d), Path) else v) for d in dests}


def _report(state: PruneRun) -> dict:
    import platform

    import torch
    import torch_pruning

    from detprune import __version__

    result = state.result
    report = result.as_dict()
    report.pop("channels")  # channels.json holds them
    report["model"] = str(state.args.model)
    report["criterion"] = None if state.args.scores else state.args.criterion
    report["scores"] = "scores.pt"
    report["imgsz"] = state.args.imgsz
    report["flops_unit"] = "FLOPs = 2 x MACs, MACs counted by torch_pruning.utils.count_ops_and_params"
    report["versions"] = {"detprune": __version__, "torch": torch.__version__, "torch_pruning": torch_pruning.__version__,
                          "python": platform.python_version()}
    return report


def _print_summary(state: PruneRun, out: Path) -> None:
    from detprune.pruning.flops import format_count

    result = state.result
    before, after = result.channels_before, result.channels_after
    width = max(len(n) for n in before)
    print(f"{'layer':<{width}}  {'before':>6}  {'after':>6}  {'kept':>5}")
    for name, b in before.items():
        a = after.get(name, 0)
        print(f"{name:<{width}}  {b:>6}  {a:>6}  {a / b if b else 1:>5.0%}")
    rb, ra = result.before, result.after
    print(f"params  {format_count(rb.params):>8} -> {format_count(ra.params):>8}  ({ra.params / rb.params:.1%} kept)")
    print(f"FLOPs   {format_count(rb.flops):>8} -> {format_count(ra.flops):>8}  ({ra.macs / rb.macs:.1%} kept, at {state.args.imgsz} px)")
    target = result.target
    print(f"target: {target.describe()}; reached {target.describe(result.achieved[target.kind])}; "
          f"{result.num_prunable_groups}/{result.num_groups} groups prunable; surgery {result.seconds.get('surgery', 0):.2f} s")
    print(f"wrote {out / MARKER}, prune.json, channels.csv/.json/.png, scores.pt, config.yaml in {out}")
