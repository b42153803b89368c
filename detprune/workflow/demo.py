"""The embedded default run: everything detprune does, on data it makes itself, on a CPU.

1. synthesise KITTI-format driving scenes (no download);
2. train a small YOLO baseline from its yaml until its validation curve flattens (a cap of
   epochs bounds the time; :mod:`detprune.workflow.baseline` states the rule);
3. train a copy of it ``finetune_epochs`` more with the fine-tunes' settings: the
   "baseline, same budget", so every compared model has had the same training;
4. prune the baseline to a FLOPs target with each criterion (Taylor under the cost-aware
   allocation, the accuracy benchmark's best; box-weighted saliency, cost too; L1 magnitude), fine-tune
   each ``finetune_epochs``;
5. evaluate every model with one protocol, export ONNX, time all of them on the CPU in
   interleaved rounds (the machine's load falls on every model alike);
6. write one report (JSON, Markdown with its figures embedded) and print the table, the
   deltas taken against the same-budget baseline.

Every number in the output is measured by this run. Stage times are wall-clock and include
whatever else the machine ran: the load average at the start and the end is recorded with them.

The run writes into a work folder beside ``out`` that replaces it only when the run has finished,
so a killed demo leaves no partial ``out`` (its work folder is removed by the next run) and a
second demo (``exist_ok``) replaces the first. A finished earlier run whose baseline settings are
the same lends its trained baseline (``reuse_baseline``): a rerun skips the longest stage and says so.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from detprune.evaluation.report import Latency, Report
from detprune.utils.atomic import write_text

BASELINE = "baseline"
SAME_BUDGET = "baseline, same budget"


@dataclass
class DemoSettings:
    out: str = "runs/demo"
    model: str = "yolov8n.yaml"
    num_images: int = 120
    val_images: int = 30
    width: int = 640
    height: int = 192
    imgsz: int = 320
    batch: int = 8
    baseline_epochs: int = 30  # the cap: training stops earlier once the validation curve is flat
    flat_window: int = 5
    flat_gain: float = 0.02
    finetune_epochs: int = 6
    target_flops: float = 0.5
    # "criterion" or "criterion/allocation". taylor/cost: the accuracy benchmark's best
    # configuration (docs/benchmarks.md, the headline), beside the flagship under the allocation
    # measured best for it and a classic
    criteria: tuple[str, ...] = ("taylor/cost", "saliency/cost", "l1")
    allocation: str = "global"  # for the criteria that name none
    distill: bool = False
    score_images: int = 64
    latency_runs: int = 30
    seed: int = 0
    # SGD at 0.01 with a one-epoch warm-up: a from-scratch baseline learns the scenes in ~30
    # short epochs this way, where ultralytics' automatic choice (AdamW, small lr) needs far more.
    train_options: dict = field(default_factory=lambda: {"lr": 0.01, "warmup_epochs": 1})

    def as_dict(self) -> dict:
        return {**asdict(self), "criteria": list(self.criteria)}

    def baseline_key(self) -> dict:
        """The settings the trained baseline depends on: equal keys, the same baseline."""
        return {k: v for k, v in self.as_dict().items() if k in BASELINE_FIELDS}


# what the baseline (and the scenes it trains on) depend on
BASELINE_FIELDS = (
    "model",
    "num_images",
    "val_images",
    "width",
    "height",
    "imgsz",
    "batch",
    "baseline_epochs",
    "flat_window",
    "flat_gain",
    "seed",
    "train_options",
)


class EpochClock:
    """After the baseline's first epoch, one line: how long the baseline and the whole demo may take
    at this machine's present speed (every later stage trains on the same frames at the same size)."""

    def __init__(self, settings: DemoSettings, log: Callable[[str], None]) -> None:
        self.settings, self.log, self.start, self.done = settings, log, time.perf_counter(), False

    def __call__(self, trainer) -> None:
        if self.done:
            return
        self.done = True
        first = time.perf_counter() - self.start
        s = self.settings
        epochs = s.baseline_epochs + s.finetune_epochs * (1 + len(s.criteria))
        self.log(
            f"      first epoch: {first:.0f} s (data loading included); at this speed the baseline takes at "
            f"most {first * s.baseline_epochs / 60:.0f} min and the whole demo about "
            f"{first * epochs / 60:.0f} min at most ({epochs} epochs in all, fewer once the curve is flat)"
        )


def variant(spec: str, default_allocation: str) -> tuple[str, str, str]:
    """(row name, criterion, allocation) of a ``criteria`` entry: ``taylor/cost`` or ``l1``."""
    criterion, _, allocation = spec.partition("/")
    allocation = allocation or default_allocation
    name = criterion if allocation == default_allocation else f"{criterion} ({allocation})"
    return name, criterion, allocation


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the system has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def reading_line(settings: DemoSettings, epochs: int) -> str:
    """What the table shows and what one run on this few images cannot."""
    return (
        f"The pruned models and '{SAME_BUDGET}' trained {epochs} + {settings.finetune_epochs} epochs each "
        f"('{BASELINE}': {epochs}); Δ is against '{SAME_BUDGET}', so it shows what pruning to "
        f"{settings.target_flops:g} of the FLOPs kept "
        f"at equal training. One run on {settings.val_images} images cannot rank the criteria: differences "
        f"of a few AP points, and AP small above all, are within run-to-run noise."
    )


def stage_times(seconds: dict[str, float], start_load, end_load) -> str:
    """One line: the stages' wall-clock seconds and the machine's load around them."""
    times = ", ".join(f"{name} {value:.1f} s" for name, value in seconds.items())
    load = ""
    if start_load is not None and end_load is not None:
        load = (
            f"; load average (1/5/15 min) {'/'.join(f'{v:g}' for v in start_load)} at the start, "
            f"{'/'.join(f'{v:g}' for v in end_load)} at the end, on {os.cpu_count()} CPUs (other work included)"
        )
    return f"stage times: {times}{load}"


def cached_baseline(previous: Path, settings: DemoSettings) -> Path | None:
    """The baseline folder of a finished earlier demo in ``previous`` trained with the same settings, or None."""
    try:
        config = yaml.safe_load((previous / "config.yaml").read_text()) or {}
        record = json.loads((previous / "baseline" / "flatness.json").read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None
    same = {k: config.get(k) for k in BASELINE_FIELDS} == json.loads(json.dumps(settings.baseline_key()))
    ok = same and (previous / "baseline" / "baseline.pt").is_file() and isinstance(record.get("curve"), list)
    return previous / "baseline" if ok else None


def run_demo(settings: DemoSettings, log: Callable[[str], None] = print, *, reuse_baseline: bool = True) -> Report:
    """The demo into ``settings.out``, written atomically (see the module docstring)."""
    from detprune.utils.atomic import atomic_dir

    out = Path(settings.out)
    previous = cached_baseline(out, settings) if reuse_baseline and out.is_dir() else None
    with atomic_dir(out) as work:
        if previous is not None:  # copied in before the folder it lives in is replaced
            (work / "baseline").mkdir()
            for name in ("baseline.pt", "flatness.json"):
                shutil.copy2(previous / name, work / "baseline" / name)
        return _run(settings, work, log, cached=previous is not None)


def _run(settings: DemoSettings, out: Path, log: Callable[[str], None], cached: bool) -> Report:
    from detprune.adapters import get_adapter
    from detprune.data.loader import load_train_val
    from detprune.data.synthetic import generate_scenes
    from detprune.evaluation.plots import plot_training_curve, save_report
    from detprune.pruning import prune_model
    from detprune.workflow.baseline import Flatness, train_until_flat
    from detprune.workflow.measure import interleaved_cpu_latency, summarise
    from detprune.workflow.stages import finetune_variant, score_channels, seeded_subset

    write_text(out / "config.yaml", yaml.safe_dump(settings.as_dict(), sort_keys=False))
    start_load = load_average()
    seconds: dict[str, float] = {}
    steps = 4 + len(settings.criteria)  # synthesise, baseline, same budget, one per criterion, latency + report
    distillation = "on" if settings.distill else "off"

    def timed(name: str, tick: float) -> None:
        seconds[name] = round(time.perf_counter() - tick, 1)

    tick = time.perf_counter()
    data = generate_scenes(
        out / "data", num_images=settings.num_images, seed=settings.seed, width=settings.width, height=settings.height
    )
    train, val = load_train_val(data, val_count=settings.val_images, seed=settings.seed)
    timed("synthesise", tick)
    log(
        f"[1/{steps}] {settings.num_images} synthetic driving scenes ({settings.width}x{settings.height}): "
        f"{len(train)} to train on, {len(val)} to evaluate on, in {data}"
    )

    tick = time.perf_counter()
    rule = Flatness(window=settings.flat_window, min_gain=settings.flat_gain)
    adapter = get_adapter(settings.model)
    train_options = dict(imgsz=settings.imgsz, batch=settings.batch, seed=settings.seed, **settings.train_options)
    if cached:
        record = json.loads((out / "baseline" / "flatness.json").read_text())
        rule.curve, rule.flattened = [float(v) for v in record["curve"]], bool(record["flattened"])
        model = adapter.prepare_for_pruning(adapter.load_checkpoint(out / "baseline" / "baseline.pt"))
        log(
            f"[2/{steps}] the {settings.model} baseline of the previous run, trained with the same settings, is reused "
            f"({len(rule.curve)} epochs; delete {Path(settings.out) / 'baseline'} to train it again)"
        )
    else:
        log(
            f"[2/{steps}] training the {settings.model} baseline from scratch until its val curve flattens "
            f"(at most {settings.baseline_epochs} epochs; {rule.describe()})"
        )
        model = adapter.load(settings.model, class_names=train.class_names)
        clock = EpochClock(settings, log)
        model = train_until_flat(
            adapter,
            model,
            train,
            val,
            max_epochs=settings.baseline_epochs,
            rule=rule,
            out_dir=out / "baseline",
            on_epoch=clock,
            **train_options,
        )
        model = adapter.prepare_for_pruning(model)
        adapter.save(model, out / "baseline" / "baseline.pt")
        write_text(out / "baseline" / "flatness.json", json.dumps({"curve": rule.curve, "flattened": rule.flattened}))
    epochs = len(rule.curve) or settings.baseline_epochs
    timed("baseline", tick)
    log(
        f"      {epochs} epochs trained, "
        + ("the curve flattened" if rule.flattened else "the cap was reached before the curve flattened")
    )

    models, onnx_paths = {}, {}  # timed together at the end

    def summary(m, row: str, onnx: Path, **info):
        models[row], onnx_paths[row] = m, onnx
        return summarise(adapter, m, val, imgsz=settings.imgsz, batch_size=settings.batch, latency_runs=0, info=info)

    # the fine-tunes' settings: the last epoch is the result, as in the accuracy benchmark (no
    # epoch picked on the images the table is measured on)
    tune_options = {**train_options, "val_every_epoch": False}
    same = f"{epochs} + {settings.finetune_epochs}"
    report = Report(
        baseline=SAME_BUDGET,
        run_info={
            "demo": settings.as_dict(),
            "baseline_training": rule.record(settings.baseline_epochs),
            "pruning": {
                "allocation": {
                    variant(c, settings.allocation)[0]: variant(c, settings.allocation)[2] for c in settings.criteria
                },
                "distillation": distillation,
                "target_flops": settings.target_flops,
            },
            "checkpoints": {
                "baseline": "its best validated epoch (ultralytics' best.pt)",
                "same budget and pruned": "the last epoch of their fine-tuning",
            },
        },
    )
    report.add(
        BASELINE,
        summary(
            model, BASELINE, out / "baseline" / "baseline.onnx", checkpoint="baseline/baseline.pt", epochs=str(epochs)
        ),
    )

    tick = time.perf_counter()
    log(
        f"[3/{steps}] {SAME_BUDGET}: the baseline trained {settings.finetune_epochs} more epochs "
        "with the fine-tunes' settings"
    )
    folder = out / "same_budget"
    longer = finetune_variant(
        adapter,
        copy.deepcopy(model),
        train,
        val,
        epochs=settings.finetune_epochs,
        out_dir=folder,
        label="same-budget epochs",
        **tune_options,
    )
    adapter.save(longer, folder / "baseline.pt")
    report.add(
        SAME_BUDGET,
        summary(longer, SAME_BUDGET, folder / "baseline.onnx", checkpoint="same_budget/baseline.pt", epochs=same),
    )
    timed("same_budget", tick)

    scored = seeded_subset(train, settings.score_images, settings.seed)
    for step, spec in enumerate(settings.criteria, start=4):
        name, criterion, allocation = variant(spec, settings.allocation)
        log(
            f"[{step}/{steps}] {criterion}: score, prune to {settings.target_flops:g} of the FLOPs "
            f"(allocation {allocation}), fine-tune {settings.finetune_epochs} epochs "
            f"(distillation {distillation}), evaluate"
        )
        tick = time.perf_counter()
        slug = name.replace(" (", "-").rstrip(")")
        folder = out / slug
        scores = score_channels(adapter, model, scored, criterion, imgsz=settings.imgsz, batch_size=settings.batch)
        pruned = prune_model(
            adapter,
            copy.deepcopy(model),
            scores,
            target_flops=settings.target_flops,
            allocation=allocation,
            imgsz=settings.imgsz,
        )
        tuned = finetune_variant(
            adapter,
            pruned.model,
            train,
            val,
            epochs=settings.finetune_epochs,
            out_dir=folder,
            teacher=model if settings.distill else None,
            **tune_options,
        )
        adapter.save(tuned, folder / "pruned.pt", meta={"criterion": criterion, "pruning": pruned.as_dict()})
        report.add(
            name,
            summary(
                tuned,
                name,
                folder / "pruned.onnx",
                checkpoint=f"{slug}/pruned.pt",
                criterion=criterion,
                flops_kept=pruned.achieved["flops"],
                epochs=same,
                allocation=allocation,
                distillation=distillation,
            ),
        )
        timed(slug, tick)

    log(f"[{steps}/{steps}] CPU latency of all {len(models)} models in interleaved rounds, report")
    if settings.latency_runs > 0:
        tick = time.perf_counter()
        latencies = interleaved_cpu_latency(
            adapter, models, settings.imgsz, runs=settings.latency_runs, onnx_paths=onnx_paths
        )
        for name, latency in latencies.items():
            report.variants[name].latency = Latency.coerce(latency)
        timed("latency", tick)
    end_load = load_average()
    report.run_info = {
        "reading": reading_line(settings, epochs),
        **report.run_info,
        "seconds": seconds,
        "load_average": {"start": start_load, "end": end_load, "cpus": os.cpu_count()},
    }
    curve = {}
    if rule.curve:
        state = "flat" if rule.flattened else "the cap reached before it was flat"
        drawn = plot_training_curve(
            rule.curve,
            out / "baseline_curve.png",
            stop=rule.flattened,
            title=f"Baseline training: {len(rule.curve)} epochs, {state}",
        )
        curve = {drawn.name: f"Baseline validation mAP50-95 per epoch; the rule: {rule.describe()}"}
    save_report(report, out, figures=curve)
    return report
