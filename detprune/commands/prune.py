"""``detprune prune``: score the channels, cut the model to a target, write the smaller model.

A run is a sequence of stages over one :class:`PruneRun` (:data:`STAGES`): load the model
(and the data), evaluate the original, score, prune, fine-tune, evaluate the pruned model,
write. Each stage reads what the earlier ones left and adds its own; a stage with nothing to
do (no data, no fine-tuning epochs) passes. Everything is written into a temporary folder that replaces ``--out`` only when
every stage has succeeded.

Files in ``--out``: ``pruned.pt`` (the adapter's checkpoint of the pruned model),
``prune.json`` (params and FLOPs before/after, target and result, the allocation, the
removed channels per group, timings, versions), ``channels.csv`` / ``channels.json`` (output
channels per layer before/after), ``channels.png``, ``scores.pt`` (the scores used;
``width_scores.pt`` too with ``--widths-from``) and ``config.yaml`` (every
option of the run; ``--config`` reads it back). With ``--data``: ``report.json`` /
``report.md`` (mAP, AP50, AP_small/medium/large, per-class AP, KITTI easy/moderate/hard AP
on KITTI data, params, FLOPs, ONNX Runtime CPU latency, channels per layer, before and
after), plots, ``original.onnx`` / ``pruned.onnx`` (the graphs timed), and with
``--finetune-epochs`` the fine-tuning run under ``finetune/`` (which distils from the
model before the cut with ``--distill``: :mod:`detprune.train.distill`). ``--schedule iterative`` or
``progressive`` cuts in steps with training between them (:mod:`detprune.commands.prune_schedule`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from detprune.commands import prune_schedule
from detprune.commands.outputs import check_output_folder
from detprune.commands.prune_options import add_arguments, allocation, allocation_record, distils, pick_target, uses_table, validate  # noqa: F401  (add_arguments: the CLI reads it here)
from detprune.commands.shared import compact_json, read_class_map, resolve_device

HELP = "prune a detector's channels to a FLOPs, parameter or channel target and write the smaller model"
MARKER = "pruned.pt"
# options that describe how a run writes, not what it computes: left out of config.yaml
_NOT_RECORDED = {"config", "exist_ok", "help", "trust_checkpoint"}


@dataclass
class PruneRun:
    """What the stages share: the options, then what each stage adds."""

    args: argparse.Namespace
    folder: Path  # where files go (a temporary folder until the run succeeds)
    adapter: Any = None
    model: Any = None
    dataset: Any = None  # the images scored on
    train: Any = None  # fine-tuning split (where --data is split for evaluation)
    val: Any = None  # evaluation split
    before: Any = None  # report entry of the model before pruning
    evaluation: Any = None  # the before/after Report
    criterion: Any = None
    scores: dict = field(default_factory=dict)
    teacher: Any = None  # the model before the cut, kept for distillation while fine-tuning
    width_criterion: Any = None  # --widths-from's criterion
    width_scores: Any = None  # and its scores
    result: Any = None
    latency: Any = None  # the latency search, with --target-latency
    schedule: Any = None  # the ScheduleResult, with --schedule iterative / progressive
    steps: list = field(default_factory=list)  # and its steps
    report: dict = field(default_factory=dict)


def run(args: argparse.Namespace) -> int:
    from detprune.utils.atomic import atomic_dir

    pick_target(args)
    validate(args)
    out = Path(args.out)
    check_output_folder(out, args.exist_ok, MARKER, "detprune prune")
    with atomic_dir(out) as tmp:
        state = PruneRun(args, tmp)
        for stage in STAGES if args.schedule == "one-shot" else prune_schedule.stages():
            stage(state)
    _print_summary(state, out)
    return 0


# --- stages ---------------------------------------------------------------------------------


def load_stage(state: PruneRun) -> None:
    """The adapter, the model prepared for pruning, the dataset where one is given."""
    from detprune.adapters import get_adapter
    from detprune.data.class_match import align_classes
    from detprune.errors import DetpruneError
    from detprune.workflow.loading import load_for_data

    args = state.args
    if args.scores is None:
        state.criterion = _criterion(args)
        if state.criterion.needs_data and not args.data:
            raise DetpruneError(f"criterion {args.criterion!r} scores on images: give --data (or --scores from 'detprune score')")
    if args.widths_from is not None:
        state.width_criterion = _criterion(args, args.widths_from, options=False)
        if state.width_criterion.needs_data and not args.data:
            raise DetpruneError(f"--widths-from {args.widths_from} scores on images: give --data")
    if args.data:
        state.dataset, state.train, state.val = _datasets(args)
        if getattr(state.criterion, "class_weights", None):  # a typo fails before any evaluation or scoring
            from detprune.criteria.class_weights import check_class_weights

            check_class_weights(state.criterion.class_weights, list(state.dataset.class_names))
    state.adapter = get_adapter(args.model)
    model, aligned = load_for_data(state.adapter, args.model, state.dataset, weights=args.weights, rehead=True)
    if aligned is not state.dataset:  # a trained model's classes in another order: the data's labels follow it
        own = state.adapter.class_names(model)
        state.train, state.val = (None if d is None else align_classes(d, own, notify=None) for d in (state.train, state.val))
        state.dataset = aligned
    state.model = state.adapter.prepare_for_pruning(model).to(resolve_device(args.device))


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
    if state.width_criterion is not None:  # the same images, in the same batches
        batches = _batches(state, args.widths_from) if state.width_criterion.needs_data else []
        state.width_scores = state.width_criterion.score(state.adapter, state.model, batches)
        torch.save({k: v.detach().cpu() for k, v in state.width_scores.items()}, state.folder / "width_scores.pt")


def _batches(state: PruneRun, name: str):
    from detprune.data.batch import iter_batches
    from detprune.utils.progress import progress_bar

    args = state.args
    total = -(-len(state.dataset) // args.batch_size)
    return progress_bar(iter_batches(state.dataset, args.imgsz, args.batch_size), total=total, desc=f"score {name}")


def teacher_stage(state: PruneRun) -> None:
    """A copy of the model before the cut: the teacher the pruned model distils from while it is fine-tuned."""
    import copy

    if distils(state.args):
        state.teacher = copy.deepcopy(state.model)
        for p in state.teacher.parameters():
            p.grad = None  # scoring may have left gradients; the teacher never gets one


def prune_stage(state: PruneRun) -> None:
    from detprune.pruning import prune_model

    args = state.args
    table = _latency_table(state) if uses_table(args) else None
    if args.target_latency is not None:
        from detprune.pruning.latency_target import prune_by_table, prune_to_latency

        options = dict(allocation=allocation(args), cost=args.cost, width_scores=state.width_scores,
                       subsets=_subsets(state), round_to=args.round_to, min_channels=args.min_channels,
                       max_ratio=args.max_ratio, normalisation=args.normalisation)
        if args.latency_search == "table":
            state.result, state.latency = prune_by_table(
                state.adapter, state.model, state.scores, table, target=args.target_latency,
                tolerance=args.latency_tolerance, imgsz=args.imgsz, runs=args.search_runs, threads=args.latency_threads,
                progress=print, **options)
        else:
            state.result, state.latency = prune_to_latency(
                state.adapter, state.model, state.scores, target=args.target_latency, backend=args.backend,
                tolerance=args.latency_tolerance, imgsz=args.imgsz, runs=args.search_runs, threads=args.latency_threads,
                progress=print, latency_table=table, **options)
        state.model = state.result.model
        return
    state.result = prune_model(
        state.adapter,
        state.model,
        state.scores,
        target_flops=args.target_flops,
        target_params=args.target_params,
        ratio=args.ratio,
        allocation=allocation(args),
        cost=args.cost,
        width_scores=state.width_scores,
        subsets=_subsets(state),
        round_to=args.round_to,
        min_channels=args.min_channels,
        max_ratio=args.max_ratio,
        normalisation=args.normalisation,
        imgsz=args.imgsz,
        latency_table=table,
    )


def _subsets(state: PruneRun):
    """The criterion itself where it chooses each group's channels jointly (CATRO) and the
    widths are not its own ranking's (``--widths-from`` or the uniform allocation)."""
    args, criterion = state.args, getattr(state, "criterion", None)
    joint = hasattr(criterion, "removed_positions") and not args.scores
    return criterion if joint and (args.widths_from or allocation(args) == "uniform") else None


def _latency_table(state: PruneRun):
    """The latency table of the model on ``--backend``: from the cache, else measured now."""
    from detprune.pruning.latency_measure import latency_table

    args = state.args
    return latency_table(state.adapter, state.model, backend=args.backend, imgsz=args.imgsz, threads=args.latency_threads,
                         round_to=args.round_to, check_cuts=args.table_check, cache=args.latency_cache, seed=args.seed)


def write_stage(state: PruneRun) -> None:
    """pruned.pt, prune.json, channels.csv/json/png, config.yaml (scores.pt is the score stage's)."""
    import yaml

    from detprune.pruning.plots import plot_channels

    args, result, folder = state.args, state.result, state.folder
    state.report = _report(state)
    state.model = state.model.cpu()  # a checkpoint that loads on machines without a GPU
    state.adapter.save(state.model, folder / MARKER, meta={"prune": {k: v for k, v in state.report.items() if k != "removed"}})
    (folder / "prune.json").write_text(compact_json(state.report))
    channels = {n: {"before": b, "after": result.channels_after.get(n, 0)} for n, b in result.channels_before.items()}
    (folder / "channels.json").write_text(compact_json(channels))
    rows = ["layer,before,after,removed"] + [f"{n},{c['before']},{c['after']},{c['before'] - c['after']}" for n, c in channels.items()]
    (folder / "channels.csv").write_text("\n".join(rows) + "\n")
    plot_channels(result.channels_before, result.channels_after, folder / "channels.png", title=f"{Path(str(args.model)).name} pruned")
    (folder / "config.yaml").write_text(yaml.safe_dump(recorded_config(args), sort_keys=False))


def _summary(state: PruneRun, name: str, **info):
    from detprune.workflow.measure import summarise

    args = state.args
    from detprune.commands.eval import eval_options

    return summarise(state.adapter, state.model, state.val, imgsz=args.imgsz, batch_size=args.batch_size,
                     latency_runs=args.latency_runs, onnx_path=state.folder / f"{name}.onnx", info=info,
                     eval_options=eval_options(args))


def baseline_stage(state: PruneRun) -> None:
    """Evaluate the original model (metrics, cost, CPU latency) before anything is cut."""
    if _evaluates(state.args):
        state.before = _summary(state, "original", model=str(state.args.model))


def finetune_stage(state: PruneRun) -> None:
    """Fine-tune the pruned model with its family's trainer; the pruned shapes stay."""
    from detprune.workflow.stages import finetune_variant

    args = state.args
    if args.finetune_epochs <= 0:
        return
    device = resolve_device(args.device)
    state.model = finetune_variant(
        state.adapter, state.model, state.train, state.val, epochs=args.finetune_epochs, out_dir=state.folder,
        imgsz=args.imgsz, batch=args.finetune_batch, lr=args.lr, seed=args.seed,
        device="cpu" if device.type == "cpu" else str(device.index or 0),
        teacher=state.teacher, distill_weight=args.distill_weight,
    )
    state.teacher = None  # done: free the copy


def evaluate_stage(state: PruneRun) -> None:
    """Evaluate the pruned model with the same protocol; write report.json / report.md and plots."""
    from detprune.evaluation.plots import save_report
    from detprune.evaluation.report import Report

    args = state.args
    if state.before is None:
        return
    target = state.result.target
    after = _summary(state, "pruned", model=MARKER, criterion=args.criterion, target=target.describe(),
                     round_to=args.round_to, finetune_epochs=args.finetune_epochs)
    state.evaluation = Report.from_pair(state.before, after, run_info={
        "model": str(args.model), "data": str(args.data), "criterion": args.criterion, "target": target.describe(),
        "achieved": state.result.achieved, "round_to": args.round_to, "finetune_epochs": args.finetune_epochs,
        "schedule": args.schedule, "allocation": allocation_record(args, state.result),
    })
    # channels.png (write_stage) and schedule.png (a schedule's last stage) are drawn by stages that
    # always follow this one: the report embeds them too
    figures = {"channels.png": "Output channels per layer, before and after the cut"}
    if args.schedule != "one-shot":
        figures["schedule.png"] = f"The {args.schedule} schedule step by step"
    save_report(state.evaluation, state.folder, figures=figures, channels=False)  # channels.png shows them


STAGES: tuple[Callable[[PruneRun], None], ...] = (
    load_stage, baseline_stage, score_stage, teacher_stage, prune_stage, finetune_stage, evaluate_stage, write_stage,
)


# --- helpers --------------------------------------------------------------------------------


def _criterion(args: argparse.Namespace, name: str | None = None, options: bool = True):
    """``--criterion`` with its ``--criterion-option``s, or criterion ``name`` with its defaults."""
    from detprune.criteria.base import build_criterion, parse_options

    chosen = parse_options(args.criterion_option) if options else {}
    defaults = {"seed": args.seed, "progress": True}
    if getattr(args, "class_weights", None) is not None:  # the main criterion must take them; --widths-from's gets them where it does
        from detprune.criteria.class_weights import parse_class_weights
        from detprune.errors import DetpruneError

        weights = parse_class_weights(args.class_weights)
        if options and not _takes_class_weights(args.criterion):
            raise DetpruneError(f"--class-weights does not apply to criterion {args.criterion!r}")
        (chosen if options else defaults)["class_weights"] = weights
    return build_criterion(name or args.criterion, chosen, defaults)


def _takes_class_weights(name: str) -> bool:
    import inspect

    from detprune.criteria import get_criterion

    return "class_weights" in inspect.signature(type(get_criterion(name)).__init__).parameters


def _datasets(args: argparse.Namespace):
    """(scored images, fine-tuning split, evaluation split).

    Evaluation and fine-tuning need a held-out split: then scoring draws from the training
    split only. Without either (``--no-eval``, no epochs) every image of ``--split`` is scored.
    """
    from detprune.data.loader import load_dataset, load_train_val
    from detprune.errors import BadInputError
    from detprune.workflow.stages import seeded_subset

    class_map = read_class_map(args.class_map)
    train = val = None
    if _evaluates(args) or args.finetune_epochs > 0 or args.schedule != "one-shot":
        train, val = load_train_val(args.data, class_map=class_map, val_fraction=args.val_fraction,
                                    val_count=args.val_count, seed=args.seed, val_list=args.val_list)
        scored = train
    else:
        scored = load_dataset(args.data, class_map=class_map, split=args.split)
    if len(scored) == 0:
        raise BadInputError(f"{args.data}: the dataset has no images")
    return seeded_subset(scored, args.max_images, args.seed), train, val


def _evaluates(args: argparse.Namespace) -> bool:
    return bool(args.data) and not args.no_eval


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
    report["allocation"] = allocation_record(state.args, result)
    if getattr(state.criterion, "class_weights", None) and not state.args.scores:
        report["class_weights"] = dict(state.criterion.class_weights)
    if state.width_scores is not None:
        report["width_scores"] = "width_scores.pt"
    report["imgsz"] = state.args.imgsz
    if state.latency is not None:
        report["latency_target"] = state.latency.as_dict()
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
    chosen = allocation_record(state.args, result)
    print(f"allocation: {chosen['allocation']}" + (f" on {chosen['cost']}" if chosen["cost"] else "")
          + (f", widths from {chosen['widths_from']}" if chosen["widths_from"] else ""))
    if state.latency is not None:
        search = state.latency
        predicted = f", predicted x{search.predicted_ratio:.3f} by the latency table" if search.predicted_ratio is not None else ""
        print(f"latency: x{search.measured_ratio:.3f} of the original on {search.backend}{predicted} (target x{search.target:g} "
              f"± {search.tolerance:.0%}, {len(search.candidates)} candidate(s) measured, round to {search.round_to})")
    if state.schedule is not None:
        print(prune_schedule.summary_line(state))
    if state.evaluation is not None:
        print()
        print(state.evaluation.to_table())
    extra = ", report.json/.md and plots" if state.evaluation is not None else ""
    print(f"wrote {out / MARKER}, prune.json, channels.csv/.json/.png, scores.pt, config.yaml{extra} in {out}")
