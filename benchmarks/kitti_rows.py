"""The rows of benchmarks/kitti_accuracy.py: a configuration, its cut, fine-tune and measurement, cached.

A row is (FLOPs target, criterion with options, allocation, plain or distilled fine-tune with its
weight): score the baseline's channels on ``--score-images`` fit frames, prune a copy, fine-tune
the equal budget on the fit frames, take the LAST epoch, predict on val (rect batches at 640
wide, as ultralytics' validator) and on the tuning split (where choices are made), store the
predictions for the paired bootstrap, count params and FLOPs, and time it interleaved with
the baseline on ONNX Runtime.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from detprune.data.detections_io import save_detections
from detprune.data.types import DetectionSet
from detprune.errors import BadInputError
from harness.cache import cached_result, store_result
from harness.criteria import criterion_options
from harness.cut import cut_as_run
from harness.metrics import metrics_of as fold_metrics, points

EVAL_LETTERBOX = "rect"  # ultralytics' val: per-batch rect canvas, 640 wide


@dataclass(frozen=True)
class Row:
    target: float
    criterion: str  # NAME or NAME:KEY=VALUE[:KEY=VALUE]
    allocation: str  # global, uniform or cost (the FLOPs knapsack)
    distill: float = 0.0  # distillation weight (ultralytics' ``dis``); 0 = plain fine-tune

    @classmethod
    def parse(cls, token: str, target: float) -> "Row":
        """``criterion/allocation[/distill=W]``, e.g. ``saliency:utility=loss/cost`` or ``taylor/cost/distill=1``."""
        parts = token.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise BadInputError(f"row {token!r}: expected CRITERION/ALLOCATION[/distill=W]")
        distill = 0.0
        if len(parts) == 3:
            key, _, value = parts[2].partition("=")
            try:
                distill = float(value)
            except ValueError:
                distill = -1.0
            if key != "distill" or not np.isfinite(distill) or distill <= 0:
                raise BadInputError(f"row {token!r}: the third part is distill=W with a weight W > 0")
        if parts[1] not in ("global", "uniform", "cost"):
            raise BadInputError(f"row {token!r}: allocation is global, uniform or cost")
        return cls(float(target), parts[0], parts[1], distill)

    def token(self) -> str:
        return f"{self.criterion}/{self.allocation}" + (f"/distill={self.distill:g}" if self.distill else "")

    def name(self) -> str:
        safe = self.token().replace("/", "-").replace(":", "-").replace("=", "")
        return f"flops{self.target:g}-{safe}"

    def criterion_name(self) -> str:
        return self.criterion.split(":")[0]


class RowRunner:
    """Measures the unpruned, same-budget and pruned rows of one benchmark run against its baseline."""

    def __init__(self, bench, baseline_model, log):
        self.bench, self.args, self.adapter, self.log = bench, bench.args, bench.adapter, log
        self.base = baseline_model
        self.hw = (bench.canvas_height(), self.args.width)
        self.root = bench.out / "rows"
        self._base_cost = None  # the baseline's params and FLOPs, counted once for every row
        self._base_onnx = None  # the baseline's ONNX graph, exported once for every row's timing

    # --- measurement ------------------------------------------------------------------
    def measure(self, model, folder: Path) -> dict:
        """Metrics on val (and each --eval-extra set) and tune, predictions kept, cost, latency."""
        from detprune.evaluation.protocol import evaluate_detections
        from detprune.workflow.measure import model_cost

        a = self.args
        out = {"input": f"rect batches, {a.width} wide (ultralytics' val)"}
        sets = {"val": self.bench.split.val, "tune": self.bench.split.tune, **self.bench.extra_sets}
        for name, dataset in sets.items():
            predictions = self.adapter.predictions(model, dataset, imgsz=a.width, batch_size=a.batch,
                                                   letterbox=EVAL_LETTERBOX, progress=False)
            save_detections(folder / f"predictions-{name}.npz", predictions, dataset)
            evaluated = evaluate_detections(dataset, predictions)
            out[name] = metrics_of(evaluated, list(self.bench.dataset.class_names))
            out.setdefault("kitti_protocol", {})[name] = (evaluated.get("kitti") or {}).get("protocol")
        if self._base_cost is None:
            self._base_cost = model_cost(self.adapter, self.base, self.hw)
        cost, base_cost = model_cost(self.adapter, model, self.hw), self._base_cost
        out.update(params=cost.params, flops=cost.flops, flops_kept=cost.flops / base_cost.flops,
                   params_kept=cost.params / base_cost.params, latency=self.latency(model, folder))
        return out

    def latency(self, model, folder: Path) -> dict:
        """ONNX Runtime CPU medians of this model and the baseline at batch 1, timed in turn (interleaved)."""
        runs = self.args.latency_runs
        if not runs:
            return {}
        from detprune.runtime import prepare, time_side_by_side

        def graph(net, work: Path) -> Path:
            example = self.adapter.example_inputs(net, self.hw, batch_size=1)
            return prepare("onnxruntime", self.adapter.export_module(net), example, work)

        if self._base_onnx is None:
            self._base_onnx = graph(self.base, self.root / "baseline-latency")
        path = graph(model, folder)
        stats = time_side_by_side("onnxruntime", {"baseline": self._base_onnx, "model": path}, [1, 3, *self.hw],
                                  warmup=max(3, runs // 10), runs=runs, threads=self.args.threads)
        path.unlink()
        ms, base_ms = stats["model"].median_ms, stats["baseline"].median_ms
        return {"median_ms": ms, "baseline_median_ms": base_ms, "ratio": ms / base_ms, "runs": runs,
                "threads": self.args.threads, "shape": [1, 3, *self.hw]}

    # --- cache ------------------------------------------------------------------------
    def _settings(self, **more) -> dict:
        a = self.args
        return {"baseline": self.bench.baseline_dir().name, "epochs": a.finetune_epochs, "width": a.width,
                "letterbox": EVAL_LETTERBOX, "extra": sorted(self.bench.extra_sets), "latency_runs": a.latency_runs,
                "round_to": a.round_to, "score_images": a.score_images, **more}

    def _finish(self, folder: Path, settings: dict, kind: str, model, extra: dict, tick: float) -> dict:
        result = {"settings": settings, "kind": kind, "row": kind, **extra, **self.measure(model, folder)}
        result["seconds"] = {**extra.get("seconds", {}), "total": time.perf_counter() - tick}
        return store_result(folder, result)

    # --- rows -------------------------------------------------------------------------
    def unpruned(self, cached_only: bool = False) -> dict | None:
        folder, settings = self.root / "unpruned", self._settings(epochs=0)
        cached = cached_result(folder, settings, mark=True)
        if cached or cached_only:
            return cached
        return self._finish(folder, settings, "unpruned", self.base, {}, time.perf_counter())

    def same_budget(self, cached_only: bool = False) -> dict | None:
        """The baseline trained ``--finetune-epochs`` more with the fine-tunes' settings."""
        folder, settings = self.root / "same_budget", self._settings(**self.bench.train_options(self.args.seed))
        cached = cached_result(folder, settings, mark=True)
        if cached or cached_only:
            return cached
        tick = time.perf_counter()
        model = self.fine_tune(copy.deepcopy(self.base), folder, 0.0)
        return self._finish(folder, settings, "same_budget", model, {}, tick)

    def row(self, row: Row, cached_only: bool = False) -> dict | None:
        a = self.args
        folder = self.root / row.name()
        settings = self._settings(**asdict(row), **self.bench.train_options(a.seed))
        cached = cached_result(folder, settings, mark=True)
        if cached or cached_only:
            return cached
        tick = time.perf_counter()
        model = copy.deepcopy(self.base)
        scores = self.score(model, row)
        scored = time.perf_counter()
        pruned = cut_as_run(self.adapter, model, scores, target_flops=row.target, allocation=row.allocation,
                            round_to=a.round_to, imgsz=self.hw)
        tuned = self.fine_tune(pruned.model, folder, row.distill)
        extra = {"row": row.token(), "seconds": {"score": scored - tick, "train": time.perf_counter() - scored}}
        return self._finish(folder, settings, "pruned", tuned, extra, tick)

    def score(self, model, row: Row) -> dict:
        from detprune.criteria import get_criterion
        from detprune.workflow.stages import score_channels

        a = self.args
        fit = self.bench.split.fit
        images = DetectionSet(list(fit.class_names), list(fit.samples)[: a.score_images], name="score")
        scorer = get_criterion(row.criterion_name(), **criterion_options(row.criterion, a.seed))
        return score_channels(self.adapter, model, images, scorer, imgsz=self.hw, batch_size=a.batch)

    def fine_tune(self, model, folder: Path, distill: float):
        """``--finetune-epochs`` on the fit frames (no validation); the model after the LAST epoch."""
        from ultralytics.nn.tasks import load_checkpoint

        from detprune.adapters.yolo.trainer import finetune_yolo

        options = {**self.bench.train_options(self.args.seed), "val": False, "exist_ok": True}
        if distill:
            options.update(teacher=copy.deepcopy(self.base), distill_weight=distill)
        result = finetune_yolo(model, self.bench.fit_yaml(), epochs=self.args.finetune_epochs,
                               out_dir=folder / "finetune", **options)
        torch.set_num_threads(self.args.threads)
        last, _ = load_checkpoint(str(result.last))
        return self.adapter.prepare_for_pruning(last.float())


def metrics_of(result: dict, class_names: list[str]) -> dict:
    """The k-fold benchmark's columns (points), plus KITTI moderate and hard per class."""
    row = fold_metrics(result, class_names)
    per_class = (result.get("kitti") or {}).get("per_class") or {}
    for name in class_names:
        for level in ("moderate", "hard"):
            row[f"KITTI {name} {level}"] = points((per_class.get(name) or {}).get(level))
    return row
