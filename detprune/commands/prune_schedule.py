"""``detprune prune --schedule iterative|progressive``: prune in steps, training between them.

``--schedule one-shot`` (the default) is the ordinary run of :mod:`detprune.commands.prune`:
score, cut to the target, fine-tune ``--finetune-epochs``. The other two replace its score,
prune and fine-tune stages with :func:`detprune.workflow.progressive.run_schedule`:

- ``iterative``: ``--steps k`` cuts along ``--sparsity-schedule`` (linear, cubic, geometric)
  down to ``--target-flops``, each scored on the training split (``--max-images`` caps the
  sample) and followed by ``--epochs-per-step`` epochs on all of it;
- ``progressive``: Anytime Progressive Pruning (Misra et al., arXiv 2204.01640): the training
  split is cut into ``--megabatches T`` seeded megabatches that "arrive" one by one; step ``t``
  scores on a sample of megabatches ``1..t``, cuts to the schedule's ``t``-th point and trains
  on megabatch ``t`` plus ``--replay`` (fraction, default 1.0 = all) of the earlier ones.

The epochs of every step are ``--epochs-per-step``, or ``--finetune-epochs`` when only that is
given, else 1. The run writes what ``detprune prune`` writes (``pruned.pt``, ``prune.json``
with the whole schedule as one cut of the original, the channels, the before/after report;
``scores.pt`` holds the last cut's scores, on the model as it was then) plus ``schedule.json``
(the record after every step: FLOPs, params, val and train mAP, generalisation gap, seconds)
and ``schedule.png``; each step's training run is under ``step<N>/``.
"""

from __future__ import annotations

import argparse

from detprune.errors import DetpruneError

SCHEDULES = ("one-shot", "iterative", "progressive")
DEFAULT_MEGABATCHES = 4
DEFAULT_STEPS = 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("schedule (iterative / progressive need --data and --target-flops)")
    group.add_argument("--schedule", choices=SCHEDULES, default="one-shot",
                       help="one-shot (default): cut once; iterative: --steps cuts with training between; "
                            "progressive: Anytime Progressive Pruning over --megabatches")
    group.add_argument("--megabatches", type=int, default=None,
                       help=f"progressive: megabatches the training split arrives in (>= 2, default {DEFAULT_MEGABATCHES})")
    group.add_argument("--steps", type=int, default=None, help=f"iterative: number of cuts (>= 2, default {DEFAULT_STEPS})")
    group.add_argument("--sparsity-schedule", choices=("linear", "cubic", "geometric"), default=None,
                       help="FLOPs kept after each step: linear (default), cubic (Zhu & Gupta) or geometric (APP's 0.8^s)")
    group.add_argument("--replay", type=float, default=None,
                       help="progressive: fraction of the earlier megabatches trained on again at each step (default 1.0)")
    group.add_argument("--epochs-per-step", type=int, default=None,
                       help="training epochs after every cut (default --finetune-epochs, or 1)")


def validate(args: argparse.Namespace) -> None:
    """One-line errors for the schedule flags; run after the ordinary checks of ``prune``."""
    schedule = args.schedule
    given = {flag: getattr(args, dest) is not None for flag, dest in (
        ("--megabatches", "megabatches"), ("--steps", "steps"), ("--sparsity-schedule", "sparsity_schedule"),
        ("--replay", "replay"), ("--epochs-per-step", "epochs_per_step"))}
    allowed = {"one-shot": set(), "iterative": {"--steps", "--sparsity-schedule", "--epochs-per-step"},
               "progressive": {"--megabatches", "--sparsity-schedule", "--replay", "--epochs-per-step"}}[schedule]
    wrong = [flag for flag, present in given.items() if present and flag not in allowed]
    if wrong:
        raise DetpruneError(f"{', '.join(wrong)}: not an option of --schedule {schedule}")
    if schedule == "one-shot":
        return
    if not args.data:
        raise DetpruneError(f"--schedule {schedule} trains between cuts: give --data")
    if args.target_flops is None:
        raise DetpruneError(f"--schedule {schedule} steps down to a FLOPs target: give --target-flops")
    if args.scores is not None:
        raise DetpruneError(f"--schedule {schedule} scores the model again at every step: --scores does not apply")
    count = args.megabatches if schedule == "progressive" else args.steps
    if count is not None and count < 2:
        name = "--megabatches" if schedule == "progressive" else "--steps"
        raise DetpruneError(f"{name} must be >= 2 (1 is --schedule one-shot), got {count}")
    if args.replay is not None and not 0.0 <= args.replay <= 1.0:
        raise DetpruneError(f"--replay is a fraction in [0, 1], got {args.replay}")
    if args.epochs_per_step is not None:
        if args.epochs_per_step < 1:
            raise DetpruneError(f"--epochs-per-step must be >= 1, got {args.epochs_per_step}")
        if args.finetune_epochs > 0:
            raise DetpruneError("give --epochs-per-step or --finetune-epochs for a scheduled run, not both")


def epochs_per_step(args: argparse.Namespace) -> int:
    return args.epochs_per_step or args.finetune_epochs or 1


def build_steps(args: argparse.Namespace, train) -> list:
    from detprune.pruning.schedules import iterative_steps, progressive_steps

    kind = args.sparsity_schedule or "linear"
    common = dict(kind=kind, epochs=epochs_per_step(args), score_images=args.max_images, seed=args.seed)
    if args.schedule == "progressive":
        replay = 1.0 if args.replay is None else args.replay
        return progressive_steps(train, args.megabatches or DEFAULT_MEGABATCHES, args.target_flops, replay=replay, **common)
    return iterative_steps(train, args.steps or DEFAULT_STEPS, args.target_flops, **common)


def schedule_stage(state) -> None:
    """Score, cut and train step by step (replaces prune's score, prune and fine-tune stages)."""
    import torch

    from detprune.commands.prune_options import allocation
    from detprune.commands.shared import resolve_device
    from detprune.workflow.progressive import run_schedule

    args = state.args
    device = resolve_device(args.device)
    steps = build_steps(args, state.train)
    print(f"{args.schedule} schedule: {len(steps)} steps to {args.target_flops:g} of the FLOPs, "
          f"{epochs_per_step(args)} epoch(s) each on {', '.join(str(len(s.train_on)) for s in steps)} images")
    train_options = dict(imgsz=args.imgsz, batch=args.finetune_batch, lr=args.lr, seed=args.seed,
                         device="cpu" if device.type == "cpu" else str(device.index or 0))
    prune_options = dict(allocation=allocation(args), cost=args.cost, round_to=args.round_to,
                         min_channels=args.min_channels, max_ratio=args.max_ratio, normalisation=args.normalisation)
    state.schedule = run_schedule(
        state.adapter, state.model, steps, state.val, criterion=state.criterion, out_dir=state.folder,
        imgsz=args.imgsz, batch_size=args.batch_size, train_options=train_options, prune_options=prune_options,
        seed=args.seed, device=device, log=print,
    )
    state.steps = steps
    state.model, state.result, state.scores = state.schedule.model, state.schedule.prune, state.schedule.scores
    torch.save({k: v.detach().cpu() for k, v in state.scores.items()}, state.folder / "scores.pt")


def schedule_write_stage(state) -> None:
    """schedule.json and schedule.png beside what ``prune`` writes."""
    from pathlib import Path

    from detprune.pruning.schedules import image_passes
    from detprune.workflow.progressive import plot_history, write_history

    args = state.args
    info = {"schedule": args.schedule, "sparsity_schedule": args.sparsity_schedule or "linear",
            "target_flops": args.target_flops, "megabatches": args.megabatches, "steps": args.steps,
            "replay": args.replay, "epochs_per_step": epochs_per_step(args), "criterion": args.criterion,
            "imgsz": args.imgsz, "seed": args.seed, "plan": [s.describe() for s in state.steps],
            "image_passes": image_passes(state.steps)}
    write_history(state.folder / "schedule.json", state.schedule, info)
    plot_history(state.schedule.history, state.folder / "schedule.png",
                 title=f"{Path(str(args.model)).name}: {args.schedule} schedule, {args.criterion}")


def stages() -> tuple:
    from detprune.commands import prune

    return (prune.load_stage, prune.baseline_stage, schedule_stage, prune.evaluate_stage, prune.write_stage,
            schedule_write_stage)


def summary_line(state) -> str:
    history = state.schedule.history
    last = history[-1]
    gap = "-" if last.gap is None else f"{100 * last.gap:+.1f}"
    return (f"schedule: {len(history) - 1} steps, FLOPs " + " -> ".join(f"{r.flops_kept:.0%}" for r in history)
            + f"; final val mAP50 {100 * (last.val['mAP50'] or 0):.1f}, train-val gap {gap} points; "
            "schedule.json, schedule.png")
