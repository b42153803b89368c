"""The stages of the prune run (:mod:`detprune.workflow.run`), each over one ``PruneRun``.

Each stage reads what the earlier ones left and adds its own; a stage with nothing to do (no
data, no fine-tuning epochs) passes. Scoring, the cut, the FLOPs and both evaluations use the
run's one input shape (``imgsz``, a size or H,W) and letterbox.
"""

from __future__ import annotations

from pathlib import Path

from detprune.workflow.config import distils, uses_table
from detprune.workflow.run import MARKER, PruneRun


def load_stage(state: PruneRun) -> None:
    """The criterion, the dataset where one is given, the model prepared for pruning."""
    from detprune.adapters import get_adapter
    from detprune.data.class_match import align_classes
    from detprune.errors import BadInputError
    from detprune.utils.devices import resolve_device
    from detprune.workflow.criteria import build, check_has_objects, data_free_note
    from detprune.workflow.datasets import run_datasets
    from detprune.workflow.loading import load_for_data

    config = state.config
    if config.scores is None:
        state.criterion = build(config)
        if state.criterion.needs_data and not config.data:
            raise BadInputError(
                f"criterion {config.criterion_name!r} scores on images: give --data "
                "(or --scores from 'detprune score')"
            )
        if not state.criterion.needs_data:  # on the run's own output: a note, not an error
            state.log(f"detprune: {data_free_note(config)}")
    if config.widths_from is not None:
        state.width_criterion = build(config, config.widths_from, options=False)
        if state.width_criterion.needs_data and not config.data:
            raise BadInputError(f"--widths-from {config.widths_from} scores on images: give --data")
    if config.data:
        state.dataset, state.train, state.val = run_datasets(config)
        check_has_objects(state.dataset, state.criterion)
        if getattr(state.criterion, "class_weights", None):  # a typo fails before any evaluation or scoring
            from detprune.criteria.class_weights import check_class_weights

            check_class_weights(state.criterion.class_weights, list(state.dataset.class_names))
    state.adapter = get_adapter(config.model)
    model, aligned = load_for_data(state.adapter, config.model, state.dataset, weights=config.weights, rehead=True)
    if aligned is not state.dataset:  # a trained model's classes in another order: the data's labels follow it
        own = state.adapter.class_names(model)
        state.train, state.val = (
            None if d is None else align_classes(d, own, notify=None) for d in (state.train, state.val)
        )
        state.dataset = aligned
    if config.imgsz is None:  # the model's own training size, else the default: recorded resolved
        from detprune.workflow.imgsz import resolve_imgsz

        config.imgsz = resolve_imgsz(None, model)
    state.model = state.adapter.prepare_for_pruning(model).to(resolve_device(config.device))


def _batches(state: PruneRun, name: str):
    from detprune.data.batch import iter_batches
    from detprune.utils.progress import progress_bar

    config = state.config
    total = -(-len(state.dataset) // config.batch_size)
    batches = iter_batches(state.dataset, config.imgsz, config.batch_size, letterbox=config.letterbox)
    return progress_bar(batches, total=total, desc=name)


def score_stage(state: PruneRun) -> None:
    """Scores from the criterion, or read from ``scores``."""
    import torch

    from detprune.workflow.criteria import read_scores

    config = state.config
    if config.scores is not None:
        state.scores = read_scores(config.scores)
    else:
        batches = _batches(state, "score") if state.criterion.needs_data else []
        state.scores = state.criterion.score(state.adapter, state.model, batches)
    torch.save({k: v.detach().cpu() for k, v in state.scores.items()}, state.folder / "scores.pt")
    if state.width_criterion is not None:  # the same images, in the same batches
        batches = _batches(state, f"score {config.widths_from}") if state.width_criterion.needs_data else []
        state.width_scores = state.width_criterion.score(state.adapter, state.model, batches)
        torch.save({k: v.detach().cpu() for k, v in state.width_scores.items()}, state.folder / "width_scores.pt")


def teacher_stage(state: PruneRun) -> None:
    """A copy of the model before the cut: the teacher the pruned model distils from while it is fine-tuned."""
    import copy

    if distils(state.config):
        state.teacher = copy.deepcopy(state.model)
        for p in state.teacher.parameters():
            p.grad = None  # scoring may have left gradients; the teacher never gets one


def prune_stage(state: PruneRun) -> None:
    from detprune.workflow.cut import cut

    config = state.config
    table = _latency_table(state) if uses_table(config) else None
    state.result, state.latency = cut(
        state.adapter,
        state.model,
        state.scores,
        config,
        criterion=state.criterion,
        width_scores=state.width_scores,
        latency_table=table,
        progress=state.log,
    )
    if state.latency is not None:
        state.model = state.result.model


def _latency_table(state: PruneRun):
    """The latency table of the model on ``backend``: from the cache, else measured now."""
    from detprune.pruning.latency_measure import latency_table

    c = state.config
    return latency_table(
        state.adapter,
        state.model,
        backend=c.backend,
        imgsz=c.imgsz,
        threads=c.latency_threads,
        round_to=c.round_to,
        check_cuts=c.table_check,
        cache=c.latency_cache,
        seed=c.seed,
    )


def summary(state: PruneRun, name: str, **info):
    """One model's report entry (metrics, cost, latency) at the run's input shape and letterbox."""
    from detprune.workflow.measure import summarise

    c = state.config
    return summarise(
        state.adapter,
        state.model,
        state.val,
        imgsz=c.imgsz,
        batch_size=c.batch_size,
        latency_runs=c.latency_runs,
        onnx_path=state.folder / f"{name}.onnx",
        info=info,
        eval_options=c.eval_options(),
    )


def baseline_stage(state: PruneRun) -> None:
    """Evaluate the original model (metrics, cost, CPU latency) before anything is cut."""
    if state.config.evaluates():
        state.before = summary(state, "original", model=str(state.config.model))


def finetune_stage(state: PruneRun) -> None:
    """Fine-tune the pruned model with its family's trainer; the pruned shapes stay."""
    from detprune.utils.devices import resolve_device, trainer_device
    from detprune.workflow.stages import finetune_variant
    from detprune.workflow.trainer_args import parse_trainer_args

    c = state.config
    if c.finetune_epochs <= 0:
        return
    state.model = finetune_variant(
        state.adapter,
        state.model,
        state.train,
        state.val,
        epochs=c.finetune_epochs,
        out_dir=state.folder,
        imgsz=c.imgsz,
        batch=c.finetune_batch,
        lr=c.lr,
        seed=c.seed,
        device=trainer_device(resolve_device(c.device)),
        teacher=state.teacher,
        distill_weight=c.distill_weight,
        **parse_trainer_args(c.trainer_args),
    )
    state.teacher = None  # done: free the copy


def evaluate_stage(state: PruneRun) -> None:
    """Evaluate the pruned model with the same protocol; write report.json / report.md and plots."""
    from detprune.evaluation.plots import save_report
    from detprune.evaluation.report import Report
    from detprune.workflow.config import allocation_record, imgsz_text

    c = state.config
    if state.before is None:
        return
    target = state.result.target
    after = summary(
        state,
        "pruned",
        model=MARKER,
        criterion=c.criterion_name,
        target=target.describe(),
        round_to=c.round_to,
        finetune_epochs=c.finetune_epochs,
    )
    state.evaluation = Report.from_pair(
        state.before,
        after,
        run_info={
            "model": str(c.model),
            "data": str(c.data),
            "val_data": c.val_data,
            "criterion": c.criterion_name,
            "target": target.describe(),
            "achieved": state.result.achieved,
            "round_to": c.round_to,
            "finetune_epochs": c.finetune_epochs,
            "schedule": c.schedule,
            "allocation": allocation_record(c, state.result),
            "input_shape": imgsz_text(c.imgsz),
            "letterbox": c.letterbox,
        },
    )
    # channels.png (write_stage) and schedule.png (a schedule's last stage) are drawn by stages that
    # always follow this one: the report embeds them too
    figures = {"channels.png": "Output channels per layer, before and after the cut"}
    if c.schedule != "one-shot":
        figures["schedule.png"] = f"The {c.schedule} schedule step by step"
    save_report(state.evaluation, state.folder, figures=figures, channels=False)  # channels.png shows them


def write_stage(state: PruneRun) -> None:
    """pruned.pt, prune.json, channels.csv/json/png, config.yaml (scores.pt is the score stage's)."""
    import yaml

    from detprune.pruning.plots import plot_channels
    from detprune.utils.jsonfmt import compact_json
    from detprune.workflow.record import prune_record

    c, result, folder = state.config, state.result, state.folder
    state.report = prune_record(state)
    state.model = state.model.cpu()  # a checkpoint that loads on machines without a GPU
    state.adapter.save(
        state.model, folder / MARKER, meta={"prune": {k: v for k, v in state.report.items() if k != "removed"}}
    )
    (folder / "prune.json").write_text(compact_json(state.report))
    channels = {n: {"before": b, "after": result.channels_after.get(n, 0)} for n, b in result.channels_before.items()}
    (folder / "channels.json").write_text(compact_json(channels))
    rows = ["layer,before,after,removed"]
    rows += [f"{n},{v['before']},{v['after']},{v['before'] - v['after']}" for n, v in channels.items()]
    (folder / "channels.csv").write_text("\n".join(rows) + "\n")
    plot_channels(
        result.channels_before,
        result.channels_after,
        folder / "channels.png",
        title=f"{Path(str(c.model)).name} pruned",
    )
    (folder / "config.yaml").write_text(yaml.safe_dump(c.recorded(), sort_keys=False))
