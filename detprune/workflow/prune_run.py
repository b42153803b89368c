"""One run, one folder, one report: score -> prune -> fine-tune -> evaluate, before and after.

The run folder holds ``pruned.pt`` (the physically smaller model, reloadable by ultralytics
for YOLO), ``scores.pt``, ``config.yaml`` (the exact settings), ``report.json``,
``report.md``, plots, the ONNX files the latency was measured on, and the fine-tuning run.
Every file is written atomically; the same seed and settings give the same channels.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from detprune.adapters import get_adapter
from detprune.adapters.base import DetectorAdapter
from detprune.data.batch import iter_batches
from detprune.data.loader import load_train_val
from detprune.data.types import DetectionSet
from detprune.errors import DetpruneError
from detprune.evaluation.report import Report
from detprune.utils.atomic import save_torch, write_text

log = logging.getLogger(__name__)


@dataclass
class PruneSettings:
    """Everything a prune run depends on; written to ``config.yaml``, readable as a recipe."""

    model: str
    data: str | None = None
    weights: str | None = None
    class_map: str | None = None
    criterion: str = "saliency"
    criterion_options: dict = field(default_factory=dict)
    target_flops: float | None = None
    target_params: float | None = None
    ratio: float | None = None
    round_to: int = 8
    min_channels: int = 8
    max_ratio: float | None = None
    global_ranking: bool = True
    imgsz: int = 320
    batch: int = 8
    score_images: int | None = 64
    val_fraction: float | None = None
    val_count: int | None = None
    finetune_epochs: int = 0
    finetune_options: dict = field(default_factory=dict)
    latency_runs: int = 30
    seed: int = 0
    out: str = "runs/prune/exp"

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class PruneOutcome:
    report: Report
    model: torch.nn.Module
    out: Path
    seconds: dict[str, float]


def _select(dataset: DetectionSet, count: int | None, seed: int) -> DetectionSet:
    """A seeded subset (the whole set when ``count`` is None or larger)."""
    if count is None or count >= len(dataset):
        return dataset
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    return dataset.subset(sorted(order[:count]))


def score_channels(adapter: DetectorAdapter, model, train: DetectionSet | None, settings: PruneSettings) -> dict:
    """Channel scores from the configured criterion (data-free criteria ignore ``train``)."""
    from detprune.criteria import get_criterion

    criterion = get_criterion(settings.criterion, **settings.criterion_options)
    if criterion.needs_data and train is None:
        raise DetpruneError(f"criterion {settings.criterion!r} scores on data: give --data")
    scoring = _select(train, settings.score_images, settings.seed) if train is not None else []
    batches = iter_batches(scoring, settings.imgsz, settings.batch)
    return criterion.score(adapter, model, batches)


def _prune(adapter, model, scores, settings: PruneSettings):
    from detprune.pruning.pruner import prune_model

    options: dict[str, Any] = dict(
        target_flops=settings.target_flops,
        target_params=settings.target_params,
        ratio=settings.ratio,
        global_ranking=settings.global_ranking,
        round_to=settings.round_to,
        min_channels=settings.min_channels,
        imgsz=settings.imgsz,
    )
    if settings.max_ratio is not None:
        options["max_ratio"] = settings.max_ratio
    return prune_model(adapter, model, scores, **options)


def _finetune(adapter, model, train, val, settings: PruneSettings, out: Path):
    """Fine-tune with the family's trainer; YOLO gets a YOLO dataset written from the splits."""
    if settings.finetune_epochs <= 0:
        return model
    options = {"imgsz": settings.imgsz, "batch": settings.batch, "seed": settings.seed, **settings.finetune_options}
    if adapter.family == "yolo":
        from detprune.data.convert import write_yolo_dataset

        data = write_yolo_dataset(train, val, out / "dataset")
        options.setdefault("exist_ok", True)
    else:
        data = {"train": train, "val": val}
    return adapter.finetune(model, data, epochs=settings.finetune_epochs, out_dir=out / "finetune", **options)


@dataclass
class RunInputs:
    """What every stage of a run reads: the adapter, the prepared model and the data splits."""

    adapter: DetectorAdapter
    model: torch.nn.Module
    train: DetectionSet | None
    val: DetectionSet | None


def load_inputs(settings: PruneSettings) -> RunInputs:
    """The adapter, the model prepared for pruning (re-headed for the data's classes) and the splits."""
    adapter = get_adapter(settings.model)
    train = val = None
    if settings.data:
        train, val = load_train_val(
            settings.data, class_map=settings.class_map, val_fraction=settings.val_fraction,
            val_count=settings.val_count, seed=settings.seed,
        )
    model = adapter.load(settings.model, weights=settings.weights, class_names=train.class_names if train else None)
    return RunInputs(adapter, adapter.prepare_for_pruning(model), train, val)


def summarise_variant(inputs: RunInputs, model, settings: PruneSettings, out: Path, name: str, **info):
    """The report entry of one model: metrics on val (where there is data), cost, CPU latency."""
    from detprune.evaluation.report import ModelSummary
    from detprune.pruning.pruner import conv_channels
    from detprune.workflow.measure import model_cost, summarise

    if inputs.val is None:
        cost = model_cost(inputs.adapter, model, settings.imgsz)
        return ModelSummary(params=cost.params, flops=cost.flops, channels=conv_channels(model), info=info)
    return summarise(inputs.adapter, model, inputs.val, imgsz=settings.imgsz, batch_size=settings.batch,
                     latency_runs=settings.latency_runs, onnx_path=out / f"{name}.onnx", info=info)


def prune_variant(inputs: RunInputs, settings: PruneSettings, out: Path, seconds: dict[str, float]):
    """Score, prune a copy of ``inputs.model``, fine-tune and save it under ``out``.

    Returns the pruned model and the pruner's result; ``inputs.model`` is left untouched.
    """
    tick = time.perf_counter()
    torch.manual_seed(settings.seed)
    scores = score_channels(inputs.adapter, inputs.model, inputs.train, settings)
    save_torch({k: v.detach().cpu() for k, v in scores.items()}, out / "scores.pt")
    seconds["score"] = time.perf_counter() - tick

    tick = time.perf_counter()
    pruned = copy.deepcopy(inputs.model)
    result = _prune(inputs.adapter, pruned, scores, settings)
    seconds["prune"] = time.perf_counter() - tick

    tick = time.perf_counter()
    pruned = _finetune(inputs.adapter, pruned, inputs.train, inputs.val, settings, out)
    seconds["finetune"] = time.perf_counter() - tick
    inputs.adapter.save(pruned, out / "pruned.pt", meta={"settings": settings.as_dict(), "pruning": result.as_dict()})
    return pruned, result


def run_prune(settings: PruneSettings) -> PruneOutcome:
    """Run every stage and write the run folder; returns the report and the pruned model."""
    from detprune.evaluation.plots import save_report_plots

    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.yaml", yaml.safe_dump(settings.as_dict(), sort_keys=False))
    seconds: dict[str, float] = {}

    tick = time.perf_counter()
    inputs = load_inputs(settings)
    seconds["load"] = time.perf_counter() - tick

    tick = time.perf_counter()
    before = summarise_variant(inputs, inputs.model, settings, out, "original", checkpoint=str(settings.model))
    seconds["evaluate_before"] = time.perf_counter() - tick

    pruned, result = prune_variant(inputs, settings, out, seconds)

    tick = time.perf_counter()
    after = summarise_variant(
        inputs, pruned, settings, out, "pruned", checkpoint=str(out / "pruned.pt"), criterion=settings.criterion,
        target=_describe_target(settings), round_to=settings.round_to, finetune_epochs=settings.finetune_epochs,
    )
    seconds["evaluate_after"] = time.perf_counter() - tick

    report = Report.from_pair(before, after, run_info={
        "settings": settings.as_dict(), "achieved": result.achieved, "seconds": seconds,
    })
    report.save(out)
    save_report_plots(report, out)
    return PruneOutcome(report, pruned, out, seconds)


def _describe_target(settings: PruneSettings) -> str:
    if settings.target_flops is not None:
        return f"{settings.target_flops:g} of FLOPs"
    if settings.target_params is not None:
        return f"{settings.target_params:g} of parameters"
    return f"ratio {settings.ratio:g} of channels removed"
