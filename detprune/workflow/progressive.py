"""Run a pruning schedule: score, cut, train, measure after every step.

The schedules themselves (one-shot, iterative, Anytime Progressive Pruning after Misra et al.,
arXiv 2204.01640) are lists of :class:`detprune.pruning.schedules.Step`; this module drives
the existing pieces through them: the criterion scores the current model on the step's
images, :func:`detprune.pruning.prune_model` cuts it, :func:`detprune.workflow.stages.finetune_variant`
trains it on the step's images, and the adapter evaluates it.

:func:`detprune.pruning.prune_model` targets FLOPs relative to the model it is given; a step's
target is a fraction of the ORIGINAL model's FLOPs, so it is converted:
``relative = wanted * original_macs / current_macs``. A step whose model is already at or below
its target (within ``tolerance``) is not cut, only trained.

After every step (and once before the first, as step 0) the history records the FLOPs and
params kept, val mAP50 / mAP50-95 / AP_small, train mAP50 on a seeded sample of the images seen
so far, and the generalisation gap ``train mAP50 - val mAP50`` that APP is meant to narrow.
:func:`plot_history` draws it; :func:`history_json` serialises it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from torch import nn

from detprune.adapters.base import DetectorAdapter
from detprune.criteria.base import ChannelScores, Criterion
from detprune.data.types import DetectionSet
from detprune.errors import DetpruneError
from detprune.pruning.flops import Cost
from detprune.pruning.pruner import PruneResult, conv_channels
from detprune.pruning.schedules import Step
from detprune.pruning.targets import Target
from detprune.utils.atomic import atomic_path, write_text
from detprune.workflow.measure import model_cost
from detprune.workflow.stages import finetune_variant, seeded_subset

DEFAULT_TRAIN_EVAL_IMAGES = 32  # train mAP is measured on at most this many seen images


@dataclass
class StepRecord:
    """The model after one step (step 0: before any)."""

    step: int
    seen_images: int  # training images seen so far (step 0: none; its train mAP samples step 1's)
    trained_images: int  # images trained on in this step (x epochs = this step's image-passes)
    target_flops: float | None  # the step's FLOPs target, fraction of the original
    flops_kept: float  # measured, fraction of the original
    params_kept: float
    params: int
    flops: int
    cut: bool  # False where the model was already at the target
    val: dict[str, float | None]  # mAP50, mAP, AP_small (fractions)
    train_mAP50: float | None
    gap: float | None  # train mAP50 - val mAP50
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class ScheduleResult:
    model: nn.Module
    history: list[StepRecord]
    prune: PruneResult  # the whole schedule as one cut of the original (before -> final)
    scores: ChannelScores  # of the last cut (on the model as it was then)
    seconds: float


def run_schedule(
    adapter: DetectorAdapter,
    model: nn.Module,
    steps: Sequence[Step],
    val: DetectionSet,
    *,
    criterion: Criterion,
    out_dir: str | Path,
    imgsz: int = 320,
    batch_size: int = 8,
    train_options: dict | None = None,
    prune_options: dict | None = None,
    train_eval_images: int = DEFAULT_TRAIN_EVAL_IMAGES,
    tolerance: float = 0.01,
    seed: int = 0,
    device: Any = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> ScheduleResult:
    """Drive ``model`` (prepared, pruned IN PLACE until the first training replaces it) through
    ``steps``; the trained result of each step goes into the next.

    ``train_options``: keywords of :func:`finetune_variant` (``imgsz``, ``batch``, ``lr``,
    ``seed``, ``warmup_epochs``, ``device`` ...); each step trains in ``out_dir/stepN``.
    ``prune_options``: keywords of :func:`prune_model` (``round_to``, ``min_channels``,
    ``max_ratio``, ``normalisation``, ``global_ranking``). A step whose model is within
    ``tolerance`` (relative) of its FLOPs target is trained without a cut.
    """
    from detprune.data.batch import iter_batches
    from detprune.pruning import prune_model

    if not steps:
        raise DetpruneError("a schedule needs at least one step")
    out_dir = Path(out_dir)
    log = log or (lambda message: None)
    started = time.perf_counter()
    model = _to(model, device)
    original = model_cost(adapter, model, imgsz)
    channels_before = conv_channels(model)
    measure = _Measure(adapter, val, original, imgsz, batch_size, train_eval_images, seed, progress)
    history = [measure(model, 0, None, steps[0].seen, 0, cut=False, seconds={}, seen_count=0)]
    log(_line(history[0]))
    cuts: list[PruneResult] = []
    scores: ChannelScores = {}
    for index, step in enumerate(steps, start=1):
        tick = time.perf_counter()
        seconds: dict[str, float] = {}
        current = model_cost(adapter, model, imgsz)
        relative = step.flops * original.macs / current.macs  # prune_model's target is relative to its input
        cut = relative < 1.0 - tolerance
        if cut:
            model = adapter.prepare_for_pruning(model)  # the trainer hands back a reloaded model
            batches = iter_batches(step.score_on, imgsz, batch_size) if criterion.needs_data else iter(())
            scores = criterion.score(adapter, model, batches)
            seconds["score"] = time.perf_counter() - tick
            try:
                result = prune_model(
                    adapter, model, scores, target_flops=relative, imgsz=imgsz, **(prune_options or {})
                )
            except DetpruneError as err:
                raise DetpruneError(f"step {index} (to {step.flops:.3f} of the original FLOPs): {err}") from None
            cuts.append(result)
            seconds["prune"] = sum(result.seconds.values())
        tock = time.perf_counter()
        model = finetune_variant(
            adapter,
            model,
            step.train_on,
            val,
            epochs=step.epochs,
            out_dir=out_dir / f"step{index}",
            **(train_options or {}),
        )
        model = _to(adapter.prepare_for_pruning(model), device)
        seconds["train"] = time.perf_counter() - tock
        seconds["step"] = time.perf_counter() - tick
        record = measure(model, index, step.flops, step.seen, len(step.train_on), cut=cut, seconds=seconds)
        history.append(record)
        log(_line(record))

    whole = _as_one_cut(adapter, model, imgsz, original, channels_before, cuts, steps[-1].flops)
    return ScheduleResult(model, history, whole, scores, time.perf_counter() - started)


def _as_one_cut(
    adapter, model, imgsz, original: Cost, channels_before: dict, cuts: list[PruneResult], target: float
) -> PruneResult:
    """The schedule's cuts as one :class:`PruneResult` of the original model (what prune.json records)."""
    from detprune.pruning.schedules import compose_removals

    if not cuts:
        raise DetpruneError("the schedule never cut the model: every step was already at its FLOPs target")
    final = model_cost(adapter, model, imgsz)
    after = conv_channels(model)
    # prunable channels of the original, from the first cut: its removed root channels / its ratio
    prunable = (
        sum(len(r.channels) for r in cuts[0].removed) / cuts[0].achieved["ratio"] if cuts[0].achieved["ratio"] else 0
    )
    removed = compose_removals(channels_before, [r.removed for r in cuts])
    return PruneResult(
        model=model,
        before=original,
        after=final,
        predicted=final,
        channels_before=channels_before,
        channels_after=after,
        removed=removed,
        target=Target("flops", target),
        achieved={
            "flops": final.macs / original.macs,
            "params": final.params / original.params,
            "ratio": sum(len(r.channels) for r in removed) / prunable if prunable else 0.0,
        },
        settings={**cuts[-1].settings, "cuts": len(cuts)},
        num_groups=cuts[0].num_groups,
        num_prunable_groups=cuts[0].num_prunable_groups,
        seconds={k: sum(r.seconds.get(k, 0.0) for r in cuts) for k in ("graph", "allocate", "surgery")},
    )


class _Measure:
    """Accuracy and cost of the model after a step, into a :class:`StepRecord`."""

    def __init__(self, adapter, val, original: Cost, imgsz, batch_size, train_images, seed, progress) -> None:
        self.adapter, self.val, self.original = adapter, val, original
        self.imgsz, self.batch_size, self.train_images, self.seed, self.progress = (
            imgsz,
            batch_size,
            train_images,
            seed,
            progress,
        )

    def __call__(
        self,
        model,
        step: int,
        target,
        seen: DetectionSet,
        trained: int,
        *,
        cut: bool,
        seconds: dict,
        seen_count: int | None = None,
    ) -> StepRecord:
        tick = time.perf_counter()
        cost = model_cost(self.adapter, model, self.imgsz)
        metrics = self.adapter.evaluate(
            model, self.val, imgsz=self.imgsz, batch_size=self.batch_size, progress=self.progress
        )
        val = {k: _number(metrics.get(k)) for k in ("mAP50", "mAP", "AP_small")}
        train_map = None
        if self.train_images > 0 and len(seen):
            sample = seeded_subset(seen, self.train_images, self.seed)
            train_map = _number(
                self.adapter.evaluate(
                    model, sample, imgsz=self.imgsz, batch_size=self.batch_size, progress=self.progress
                ).get("mAP50")
            )
        gap = None if train_map is None or val["mAP50"] is None else train_map - val["mAP50"]
        seconds = {**seconds, "measure": time.perf_counter() - tick}
        return StepRecord(
            step,
            len(seen) if seen_count is None else seen_count,
            trained,
            target,
            cost.macs / self.original.macs,
            cost.params / self.original.params,
            cost.params,
            cost.flops,
            cut,
            val,
            train_map,
            gap,
            seconds,
        )


def _to(model: nn.Module, device) -> nn.Module:
    return model if device is None else model.to(device)


def _number(value) -> float | None:
    return None if value is None else float(value)


def _line(r: StepRecord) -> str:
    def pts(v):
        return "-" if v is None else f"{100 * v:.1f}"

    return (
        f"step {r.step}: FLOPs {r.flops_kept:.1%} of the original, seen {r.seen_images} images; val mAP50 "
        f"{pts(r.val['mAP50'])}, train mAP50 {pts(r.train_mAP50)}, gap {pts(r.gap)}"
    )


# --- outputs ------------------------------------------------------------------------------------


def history_json(result: ScheduleResult, info: dict | None = None) -> str:
    """The history (and ``info``: the schedule's settings) as indented JSON."""
    return (
        json.dumps(
            {**(info or {}), "history": [r.as_dict() for r in result.history], "seconds": result.seconds}, indent=2
        )
        + "\n"
    )


def write_history(path: str | Path, result: ScheduleResult, info: dict | None = None) -> Path:
    path = Path(path)
    write_text(path, history_json(result, info))
    return path


def plot_history(history: Sequence[StepRecord], path: str | Path, *, title: str = "Pruning schedule") -> Path:
    """Val and train mAP50 (left axis) and FLOPs kept (right axis) after every step, as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not history:
        raise DetpruneError("no steps to plot")
    steps = [r.step for r in history]
    fig = Figure(figsize=(6.4, 3.8))
    ax = fig.add_subplot()
    for label, values, style in (
        ("val mAP50", [r.val["mAP50"] for r in history], "o-"),
        ("val mAP50-95", [r.val["mAP"] for r in history], "s-"),
        ("train mAP50", [r.train_mAP50 for r in history], "^--"),
    ):
        points = [(s, 100 * v) for s, v in zip(steps, values) if v is not None]
        if points:
            ax.plot(*zip(*points), style, label=label)
    ax.set_xlabel("step (0 = before pruning)")
    ax.set_ylabel("AP (points)")
    ax.set_ylim(bottom=0)
    ax.set_xticks(steps)
    ax.grid(alpha=0.3)
    flops = ax.twinx()
    flops.plot(steps, [100 * r.flops_kept for r in history], "k:", marker="x", label="FLOPs kept")
    flops.set_ylabel("FLOPs kept (% of original)")
    flops.set_ylim(0, 105)
    lines = ax.get_legend_handles_labels()
    more = flops.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="lower left")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path, suffix=path.suffix) as tmp:
        FigureCanvasAgg(fig).print_figure(str(tmp), dpi=120)
    return path
