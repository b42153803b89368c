"""The prune run, in the library: :func:`run` takes a :class:`PruneConfig` and writes one folder.

``detprune prune``, ``detprune.run`` and the benchmarks call it. A run is a sequence of stages
over one :class:`PruneRun`: load the model (and the data), evaluate the original, score, prune,
fine-tune, evaluate the pruned model, write (:mod:`detprune.workflow.prune_stages`;
``--schedule iterative|progressive`` replaces score, prune and fine-tune by the schedule's loop,
:mod:`detprune.workflow.schedule`). Everything is written into a temporary folder that replaces
``out`` only when every stage has succeeded.

Files in ``out``: ``pruned.pt``, ``prune.json`` (params and FLOPs before/after at the run's
input shape, target and result, the allocation, the removed channels per group, versions),
``channels.csv`` / ``channels.json`` / ``channels.png``, ``scores.pt`` (``width_scores.pt``
with ``widths_from``) and ``config.yaml`` (every setting; a recipe that repeats the run).
With data: ``report.json`` / ``report.md`` (before and after, the same input shape for both),
plots, ``original.onnx`` / ``pruned.onnx``, and with ``finetune_epochs`` the fine-tuning run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from detprune.workflow.config import PruneConfig

MARKER = "pruned.pt"


@dataclass
class PruneRun:
    """What the stages share: the settings, then what each stage adds."""

    config: PruneConfig
    folder: Path  # where files go (a temporary folder until the run succeeds)
    log: Callable[[str], None] = print
    adapter: Any = None
    model: Any = None
    dataset: Any = None  # the images scored on
    train: Any = None  # fine-tuning split
    val: Any = None  # evaluation split
    before: Any = None  # report entry of the model before pruning
    evaluation: Any = None  # the before/after Report
    criterion: Any = None
    scores: dict = field(default_factory=dict)
    teacher: Any = None  # the model before the cut, kept for distillation while fine-tuning
    width_criterion: Any = None  # widths_from's criterion
    width_scores: Any = None  # and its scores
    result: Any = None
    latency: Any = None  # the latency search, with target_latency
    schedule: Any = None  # the ScheduleResult, with schedule iterative / progressive
    steps: list = field(default_factory=list)  # and its steps
    report: dict = field(default_factory=dict)
    out: Path | None = None  # the finished folder


def stages(config: PruneConfig) -> tuple:
    from detprune.workflow import prune_stages as s

    if config.schedule == "one-shot":
        return (
            s.load_stage,
            s.baseline_stage,
            s.score_stage,
            s.teacher_stage,
            s.prune_stage,
            s.finetune_stage,
            s.evaluate_stage,
            s.write_stage,
        )
    from detprune.workflow import schedule

    return (
        s.load_stage,
        s.baseline_stage,
        schedule.schedule_stage,
        s.evaluate_stage,
        s.write_stage,
        schedule.schedule_write_stage,
    )


# the config's fields that name files or folders the run reads
INPUT_FIELDS = ("model", "weights", "data", "val_data", "train_list", "scores", "val_list")


def run(config: PruneConfig, *, log: Callable[[str], None] = print) -> PruneRun:
    """Check ``config``, run every stage, write ``config.out`` atomically; the finished state."""
    from detprune.utils.output_folder import check_output_folder
    from detprune.utils.atomic import atomic_dir
    from detprune.utils.checkpoints import load_policy
    from detprune.utils.overlap import check_outputs

    if config.model is None:
        raise_missing("model")
    config = config.resolved().validate()
    out = Path(config.out)
    # the CLI checks every flag; a run from Python gets the same rule for the files it reads
    check_outputs([("out", out)], [(k, getattr(config, k)) for k in INPUT_FIELDS if getattr(config, k)])
    check_output_folder(out, config.exist_ok, MARKER, "detprune prune")
    if config.threads is not None:
        import torch

        torch.set_num_threads(config.threads)
    policy = {k: bool(getattr(config, k)) for k in ("trust_checkpoint", "partial_weights", "random_init")}
    with load_policy(**policy), atomic_dir(out) as tmp:
        state = PruneRun(config, tmp, log=log)
        for stage in stages(config):
            stage(state)
    state.out = out
    return state


def raise_missing(name: str) -> None:
    from detprune.errors import BadInputError

    raise BadInputError(f"a prune run needs --{name.replace('_', '-')}")
