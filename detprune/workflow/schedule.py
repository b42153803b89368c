"""``schedule: iterative | progressive``: prune in steps, training between them.

``one-shot`` (the default) is the ordinary run: score, cut to the target, fine-tune
``finetune_epochs``. The other two replace its score, prune and fine-tune stages with
:func:`detprune.workflow.progressive.run_schedule`:

- ``iterative``: ``steps`` cuts along ``sparsity_schedule`` (linear, cubic, geometric) down to
  ``target_flops``, each scored on the training split (``max_images`` caps the sample) and
  followed by ``epochs_per_step`` epochs on all of it;
- ``progressive``: Anytime Progressive Pruning (Misra et al., arXiv 2204.01640): the training
  split is cut into ``megabatches`` seeded megabatches that "arrive" one by one; step ``t``
  scores on a sample of megabatches ``1..t``, cuts to the schedule's ``t``-th point and trains
  on megabatch ``t`` plus ``replay`` (fraction, default 1.0 = all) of the earlier ones.

The run writes what a one-shot run writes (``prune.json`` with the whole schedule as one cut
of the original; ``scores.pt`` the last cut's scores) plus ``schedule.json`` (the record after
every step) and ``schedule.png``; each step's training run is under ``step<N>/``.
"""

from __future__ import annotations

from pathlib import Path

from detprune.workflow.config import DEFAULT_MEGABATCHES, DEFAULT_STEPS, PruneConfig, epochs_per_step
from detprune.workflow.cut import cut_options
from detprune.workflow.run import PruneRun


def build_steps(config: PruneConfig, train) -> list:
    from detprune.pruning.schedules import iterative_steps, progressive_steps

    kind = config.sparsity_schedule or "linear"
    common = dict(kind=kind, epochs=epochs_per_step(config), score_images=config.max_images, seed=config.seed)
    if config.schedule == "progressive":
        replay = 1.0 if config.replay is None else config.replay
        megabatches = config.megabatches or DEFAULT_MEGABATCHES
        return progressive_steps(train, megabatches, config.target_flops, replay=replay, **common)
    return iterative_steps(train, config.steps or DEFAULT_STEPS, config.target_flops, **common)


def schedule_stage(state: PruneRun) -> None:
    """Score, cut and train step by step (replaces the score, prune and fine-tune stages)."""
    import torch

    from detprune.utils.devices import resolve_device, trainer_device
    from detprune.workflow.progressive import run_schedule
    from detprune.workflow.trainer_args import parse_trainer_args

    c = state.config
    device = resolve_device(c.device)
    steps = build_steps(c, state.train)
    state.log(
        f"{c.schedule} schedule: {len(steps)} steps to {c.target_flops:g} of the FLOPs, "
        f"{epochs_per_step(c)} epoch(s) each on {', '.join(str(len(s.train_on)) for s in steps)} images"
    )
    train_options = dict(
        imgsz=c.imgsz,
        batch=c.finetune_batch,
        lr=c.lr,
        seed=c.seed,
        device=trainer_device(device),
        **parse_trainer_args(c.trainer_args),
    )
    prune_options = cut_options(c)
    prune_options.pop("subsets")
    state.schedule = run_schedule(
        state.adapter,
        state.model,
        steps,
        state.val,
        criterion=state.criterion,
        out_dir=state.folder,
        imgsz=c.imgsz,
        batch_size=c.batch_size,
        train_options=train_options,
        prune_options=prune_options,
        seed=c.seed,
        device=device,
        log=state.log,
    )
    state.steps = steps
    state.model, state.result, state.scores = state.schedule.model, state.schedule.prune, state.schedule.scores
    torch.save({k: v.detach().cpu() for k, v in state.scores.items()}, state.folder / "scores.pt")


def schedule_write_stage(state: PruneRun) -> None:
    """schedule.json and schedule.png beside what a one-shot run writes."""
    from detprune.pruning.schedules import image_passes
    from detprune.workflow.progressive import plot_history, write_history

    c = state.config
    info = {
        "schedule": c.schedule,
        "sparsity_schedule": c.sparsity_schedule or "linear",
        "target_flops": c.target_flops,
        "megabatches": c.megabatches,
        "steps": c.steps,
        "replay": c.replay,
        "epochs_per_step": epochs_per_step(c),
        "criterion": c.criterion_name,
        "imgsz": c.imgsz,
        "seed": c.seed,
        "plan": [s.describe() for s in state.steps],
        "image_passes": image_passes(state.steps),
    }
    write_history(state.folder / "schedule.json", state.schedule, info)
    plot_history(
        state.schedule.history,
        state.folder / "schedule.png",
        title=f"{Path(str(c.model)).name}: {c.schedule} schedule, {c.criterion_name}",
    )


def summary_line(state: PruneRun) -> str:
    history = state.schedule.history
    last = history[-1]
    gap = "-" if last.gap is None else f"{100 * last.gap:+.1f}"
    return (
        f"schedule: {len(history) - 1} steps, FLOPs "
        + " -> ".join(f"{r.flops_kept:.0%}" for r in history)
        + f"; final val mAP50 {100 * (last.val['mAP50'] or 0):.1f}, train-val gap {gap} points; "
        "schedule.json, schedule.png"
    )
