"""The cells of benchmarks/accuracy.py: pruned, fine-tuned variants of the fold baselines, each cached as json.

A cell is (FLOPs target, criterion, allocation, plain/distilled fine-tune, seed, class weights) on one fold:
score the fold baseline's channels on the fold's training frames, prune a copy, fine-tune it
for the equal budget, take the LAST epoch, evaluate on the held-out fold, count params and
FLOPs, and time it on ONNX Runtime interleaved with the unpruned baseline of that fold. The fold
baselines themselves are ``harness.kfold_baselines`` (the diagnostic tools read them too).
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from detprune.criteria.class_weights import parse_class_weights
from detprune.data.types import DetectionSet
from harness.cache import cached_result, store_result
from harness.criteria import (CAR_OPTIONS, accepts, criterion_options, criterion_parameters, split_allocation,
                              split_criterion)
from harness.cut import cut_as_run
from harness.kfold_baselines import FoldBaselines, distill_keyword
from harness.log import past_stop
from harness.metrics import metrics_of


@dataclass(frozen=True)
class Cell:
    target: float
    criterion: str
    # "global", "uniform", "cost" (FLOPs), "latency" (a measured table; the target is then predicted
    # latency kept, not FLOPs), or "widths:CRITERION-ALLOCATION" (widths of another criterion)
    allocation: str
    distill: bool
    seed: int
    replica: str = ""  # "rerun": the same settings trained again from scratch in its own folder
    class_weights: str = ""  # "Pedestrian=3,Cyclist=3": class priorities of the scoring criteria
    finetune_weights: str = ""  # the same, of the fine-tuning loss (ultralytics' per-class BCE weights)

    def name(self) -> str:
        mode = "distill" if self.distill else "plain"
        allocation = self.allocation.replace(":", "-of-")
        weights = f"-cw-{self.class_weights.replace(',', '_')}" if self.class_weights else ""
        weights += f"-ftw-{self.finetune_weights.replace(',', '_')}" if self.finetune_weights else ""
        criterion = self.criterion.replace(":", "-").replace("=", "")
        return (f"{criterion}-{allocation}-{mode}-seed{self.seed}" + (f"-{self.replica}" if self.replica else "")
                + weights)

    def label(self) -> str:
        return f"flops {self.target:g} {self.name()}"

    def describe(self) -> dict:
        # a setting enters the cache key only when used, so the cells cached before it keep their keys
        described = asdict(self)
        for unused in ("class_weights", "finetune_weights"):
            if not described[unused]:
                del described[unused]
        return described


JOINT_SUBSET_CRITERIA = ("catro",)  # choose a group's channels jointly, at a width given to them


def joint_subsets(cell: Cell) -> bool:
    """Whether ``cell``'s criterion picks subsets at widths it did not allocate (uniform, or another's)."""
    allocation, widths_from = split_allocation(cell.allocation)
    return split_criterion(cell.criterion)[0] in JOINT_SUBSET_CRITERIA and (
        widths_from is not None or allocation == "uniform"
    )


# options whose default changed after cells were cached: their resolved value enters a cell's key
KEYED_OPTIONS = {"catro": ("ridge",)}


class Runner(FoldBaselines):
    """Trains, caches and measures the baselines and cells of one benchmark run."""

    def __init__(self, args, adapter, dataset: DetectionSet, splits, hw: tuple[int, int], key: Callable, log: Callable):
        super().__init__(args, adapter, dataset, splits, hw, key, log)
        self.kitti_protocol = None

    # --- cells ------------------------------------------------------------------------
    def past_stop(self) -> bool:
        """Whether the wall clock (UTC) is past ``--stop-at`` (HH:MM, today)."""
        return past_stop(self.args.stop_at)

    def cell_dir(self, cell: Cell, fold: int) -> Path:
        return self.out / "cells" / f"flops{cell.target:g}" / cell.name() / f"fold{fold}"

    def cell_settings(self, cell: Cell, fold: int) -> dict:
        from detprune.criteria import get_criterion

        settings = {**self._settings(fold), **cell.describe(), **self.train_options(cell.seed)}
        name = split_criterion(cell.criterion)[0]
        if "car" in (name, split_allocation(cell.allocation)[1]):  # CAR's sampling is part of its result
            settings["car"] = {**CAR_OPTIONS, "images": self.args.car_images}
        if joint_subsets(cell):
            settings["subsets"] = name
        if split_allocation(cell.allocation)[0] == "latency":  # a rebuilt table version prices the cut anew
            from detprune.pruning.latency_table import TABLE_VERSION

            settings["latency_table"] = TABLE_VERSION
        for option in KEYED_OPTIONS.get(name, ()):  # the resolved value, so a changed default is not read from cache
            value = get_criterion(name, **criterion_options(cell.criterion, cell.seed)).options()[option]
            settings[f"{name}_{option}"] = str(value)
        return settings

    def is_cached(self, cell: Cell, fold: int) -> bool:
        return cached_result(self.cell_dir(cell, fold), self.cell_settings(cell, fold)) is not None

    def unsupported(self, cell: Cell) -> str | None:
        from detprune.pruning import prune_model

        allocation, widths_from = split_allocation(cell.allocation)
        if allocation != "global" and not accepts(prune_model, "allocation"):
            return f"allocation '{allocation}' is not in this prune_model yet"
        if widths_from is not None and not accepts(prune_model, "width_scores"):
            return "widths from another criterion are not in this prune_model yet"
        if cell.class_weights and "class_weights" not in criterion_parameters(split_criterion(cell.criterion)[0]):
            return f"{cell.criterion} takes no class weights"
        if cell.distill and distill_keyword() is None:
            return "distilled fine-tuning is not in this finetune_yolo yet"
        return None

    def _finish(self, folder: Path, settings: dict, kind: str, fold: int, model, extra: dict, tick: float) -> dict:
        evaluated = self.adapter.evaluate(model, self.splits[fold][1], imgsz=self.hw, batch_size=self.args.batch,
                                          progress=False)
        self.kitti_protocol = (evaluated.get("kitti") or {}).get("protocol", "exact")
        from detprune.workflow.measure import model_cost

        cost = model_cost(self.adapter, model, self.hw)
        base_cost = model_cost(self.adapter, self.baseline(fold)[0], self.hw)
        result = {"settings": settings, "kind": kind, "fold": fold, **extra,
                  "metrics": metrics_of(evaluated, list(self.dataset.class_names)),
                  "kitti_protocol": self.kitti_protocol, "params": cost.params, "flops": cost.flops,
                  "flops_kept": cost.flops / base_cost.flops, "latency": self.latency(model, fold, folder)}
        result["seconds"] = {**result.get("seconds", {}), "total": time.perf_counter() - tick}
        return store_result(folder, result)

    def _settings(self, fold: int, **more) -> dict:
        a = self.args
        return {
            "baseline": self.baseline_dir(fold).name,
            "fold": fold,
            "epochs": a.finetune_epochs,
            "hw": list(self.hw),
            "latency_runs": a.latency_runs,
            "round_to": a.round_to,
            **more,
        }

    def unpruned(self, fold: int) -> dict:
        folder = self.out / "cells" / "unpruned" / f"fold{fold}"
        settings = {**self._settings(fold), "epochs": 0}
        cached = cached_result(folder, settings, mark=True)
        if cached:
            return cached
        tick = time.perf_counter()
        return self._finish(folder, settings, "unpruned", fold, self.baseline(fold)[0], {}, tick)

    def same_budget(self, fold: int) -> dict:
        """The baseline trained ``--finetune-epochs`` more with the fine-tunes' settings."""
        a = self.args
        folder = self.out / "cells" / "same_budget" / f"fold{fold}"
        settings = {**self._settings(fold), **self.train_options(a.seed)}
        cached = cached_result(folder, settings, mark=True)
        if cached:
            return cached
        tick = time.perf_counter()
        model, _ = self.train(copy.deepcopy(self.baseline(fold)[0]), fold, a.finetune_epochs, folder, a.seed,
                              every_epoch=False)
        result = self._finish(folder, settings, "same_budget", fold, model, {}, tick)
        self.log(
            f"same budget fold {fold}: mAP50 {result['metrics']['mAP50']:.1f} in {result['seconds']['total']:.0f} s"
        )
        return result

    def cell(self, cell: Cell, fold: int) -> dict:
        from detprune.pruning import prune_model

        a = self.args
        folder, settings = self.cell_dir(cell, fold), self.cell_settings(cell, fold)
        cached = cached_result(folder, settings, mark=True)
        if cached:
            return cached
        tick = time.perf_counter()
        base = self.baseline(fold)[0]
        model = copy.deepcopy(base)
        allocation, widths_from = split_allocation(cell.allocation)
        weights = parse_class_weights(cell.class_weights, list(self.dataset.class_names))
        scores, scorer = self.score(model, fold, cell.criterion, cell.seed, weights)
        width_scores = None
        if widths_from is not None:  # widths allocated on the other criterion's scores, channels chosen by this one
            width_scores = self.score(model, fold, widths_from, cell.seed, weights)[0]
        scored = time.perf_counter()
        if allocation == "latency":
            # HALP: the knapsack on a measured latency table, cut at the table's prediction alone; the
            # prune run's latency target would also time and refine the cut, which these cells never did
            pruned = prune_model(self.adapter, model, scores, round_to=a.round_to, imgsz=self.hw,
                                 target_latency=cell.target, allocation="cost", cost="latency",
                                 latency_table=self.latency_table(base), width_scores=width_scores,
                                 subsets=scorer if joint_subsets(cell) else None)
        else:  # the run's cut; CATRO's joint subset at each width follows from its declared capability
            pruned = cut_as_run(self.adapter, model, scores, imgsz=self.hw, target_flops=cell.target,
                                allocation=allocation, widths_from=widths_from, round_to=a.round_to,
                                criterion=scorer, width_scores=width_scores)
        teacher = copy.deepcopy(base) if cell.distill else None
        tuned, _ = self.train(
            pruned.model,
            fold,
            a.finetune_epochs,
            folder,
            cell.seed,
            every_epoch=False,
            teacher=teacher,
            class_weights=parse_class_weights(cell.finetune_weights, list(self.dataset.class_names)),
        )
        extra = {"seconds": {"score": scored - tick, "train": time.perf_counter() - scored}}
        return self._finish(folder, settings, "pruned", fold, tuned, extra, tick)

    def reevaluate(self, result: dict) -> dict:
        """Evaluate a finished cell's saved model again with the evaluation code installed now.

        For a run whose cells were measured while the evaluation code changed underneath: every
        row is then scored by one protocol. Params, FLOPs and latency do not depend on it.
        """
        from ultralytics.nn.tasks import load_checkpoint

        s, fold = result["settings"], result["fold"]
        if result["kind"] == "unpruned":
            folder, path = self.out / "cells" / "unpruned" / f"fold{fold}", self.baseline_dir(fold) / "baseline.pt"
        else:
            if result["kind"] == "same_budget":
                folder = self.out / "cells" / "same_budget" / f"fold{fold}"
            else:
                cell = Cell(s["target"], s["criterion"], s["allocation"], s["distill"], s["seed"], s.get("replica", ""),
                            s.get("class_weights", ""), s.get("finetune_weights", ""))
                folder = self.cell_dir(cell, fold)
            path = folder / "finetune" / "train" / "weights" / "last.pt"
        model, _ = load_checkpoint(str(path))
        evaluated = self.adapter.evaluate(
            model.float(), self.splits[fold][1], imgsz=self.hw, batch_size=self.args.batch, progress=False
        )
        self.kitti_protocol = (evaluated.get("kitti") or {}).get("protocol", "exact")
        updated = {k: v for k, v in result.items() if k != "cached"}
        updated.update(
            metrics=metrics_of(evaluated, list(self.dataset.class_names)),
            kitti_protocol=self.kitti_protocol,
            reevaluated=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            first_metrics=result.get("first_metrics", result["metrics"]),
        )
        store_result(folder, updated)
        return {**updated, "cached": True}

    # --- cost -------------------------------------------------------------------------
    def latency(self, model, fold: int, folder: Path) -> dict:
        """ONNX Runtime CPU medians of this model and the fold's unpruned one, timed in turn (interleaved)."""
        if not self.args.latency_runs:
            return {}
        from detprune.runtime.ort import onnxruntime_side_by_side

        path = self.export(model, folder / "model.onnx")
        runs = self.args.latency_runs
        stats = onnxruntime_side_by_side(
            {"unpruned": self.baseline_onnx(fold), "model": path},
            [1, 3, *self.hw],
            warmup=max(3, runs // 10),
            runs=runs,
            threads=self.args.threads,
        )
        path.unlink()
        ms, base_ms = stats["model"].median_ms, stats["unpruned"].median_ms
        return {"median_ms": ms, "unpruned_median_ms": base_ms, "ratio": ms / base_ms, "runs": runs,
                "threads": self.args.threads}
