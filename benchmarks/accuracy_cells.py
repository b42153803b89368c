"""The cells of benchmarks/accuracy.py: fold baselines and pruned, fine-tuned variants, each cached as json.

A cell is (FLOPs target, criterion, allocation, plain/distilled fine-tune, seed, class weights) on one fold:
score the fold baseline's channels on the fold's training frames, prune a copy, fine-tune it
for the equal budget, take the LAST epoch, evaluate on the held-out fold, count params and
FLOPs, and time it on ONNX Runtime interleaved with the unpruned baseline of that fold.
"""

from __future__ import annotations

import copy
import csv
import inspect
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from detprune.criteria.class_weights import parse_class_weights
from detprune.data.types import DetectionSet
from detprune.errors import DetpruneError
from detprune.utils.atomic import write_text

STRIDE = 32


def rect_hw(dataset: DetectionSet, width: int, stride: int = STRIDE) -> tuple[int, int]:
    """ultralytics' rect batch shape for images this wide: the widest aspect ratio, height rounded up to the stride.

    ``set_rectangle`` takes the batch's largest h/w ratio and ``ceil(ratio * imgsz / stride) * stride``
    (no extra pad in training); every kitti_tiny frame gives 375/1242 -> 640x224.
    """
    ratio = max(s.height / s.width for s in dataset.samples)
    if ratio > 1:
        raise DetpruneError("rect input here assumes landscape frames (height < width)")
    return int(math.ceil(ratio * width / stride) * stride), int(width)


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


WIDTHS_PREFIX = "widths:"


def split_criterion(token: str) -> tuple[str, dict]:
    """(criterion, its options): "catro:ridge=0" -> ("catro", {"ridge": 0}); "l1" -> ("l1", {})."""
    from detprune.criteria.base import parse_options

    name, *pairs = token.split(":")
    return name, parse_options(pairs)


def split_allocation(token: str) -> tuple[str, str | None]:
    """(allocation, criterion the widths come from or None): "widths:saliency-global" -> ("global", "saliency")."""
    if not token.startswith(WIDTHS_PREFIX):
        return token, None
    criterion, _, allocation = token[len(WIDTHS_PREFIX):].partition("-")
    return allocation or "global", criterion


def allocation_label(token: str) -> str:
    """How a table names an allocation: "widths:saliency-global" -> "widths of saliency-global"."""
    return f"widths of {token[len(WIDTHS_PREFIX):]}" if token.startswith(WIDTHS_PREFIX) else token


JOINT_SUBSET_CRITERIA = ("catro",)  # choose a group's channels jointly, at a width given to them


def joint_subsets(cell: Cell) -> bool:
    """Whether ``cell``'s criterion picks subsets at widths it did not allocate (uniform, or another's)."""
    allocation, widths_from = split_allocation(cell.allocation)
    return split_criterion(cell.criterion)[0] in JOINT_SUBSET_CRITERIA and (
        widths_from is not None or allocation == "uniform"
    )


def _accepts(function: Callable, name: str) -> bool:
    return name in inspect.signature(function).parameters


def _criterion_parameters(name: str) -> set[str]:
    from detprune.criteria import get_criterion

    return set(inspect.signature(type(get_criterion(name)).__init__).parameters)


# CAR evaluates the held-out images once per masked channel: a sampled, cheap configuration so one
# fold's scoring takes minutes at 640x224 on CPU (the loss-increase proxy, not mAP)
CAR_OPTIONS = {"metric": "loss", "max_channels_per_layer": 4}


# options whose default changed after cells were cached: their resolved value enters a cell's key
KEYED_OPTIONS = {"catro": ("ridge",)}


def criterion_options(token: str, seed: int, class_weights: dict[str, float] | None = None) -> dict:
    """The options the benchmark gives criterion ``token`` ("NAME" or "NAME:KEY=VALUE:..."): the
    token's own, over the seed, no progress bar, CAR's sampling and the class weights."""
    name, own = split_criterion(token)
    accepted = _criterion_parameters(name)
    unknown = sorted(set(own) - accepted)
    if unknown:
        raise DetpruneError(f"criterion {token!r}: {name} has no option {', '.join(unknown)}")
    options = {"seed": seed, "progress": False, **(CAR_OPTIONS if name == "car" else {})}
    if class_weights:
        options["class_weights"] = class_weights
    return {**{k: v for k, v in options.items() if k in accepted}, **own}


def metrics_of(result: dict, class_names: list[str]) -> dict:
    """Points (AP x 100) of the reported columns from ``adapter.evaluate``'s dict."""

    def pt(value):
        return None if value is None else 100.0 * float(value)

    kitti = result.get("kitti") or {}
    row = {"mAP50": pt(result.get("mAP50")), "mAP50-95": pt(result.get("mAP")), "AP_small": pt(result.get("AP_small"))}
    for name in class_names:
        row[f"AP {name}"] = pt((result.get("per_class_AP") or {}).get(name))
    for level in ("moderate", "hard"):
        row[f"KITTI {level}"] = pt((kitti.get("mean") or {}).get(level))
    return row


class Runner:
    """Trains, caches and measures the baselines and cells of one benchmark run."""

    def __init__(self, args, adapter, dataset: DetectionSet, splits, hw: tuple[int, int], key: Callable, log: Callable):
        self.args, self.adapter, self.dataset, self.splits, self.hw = args, adapter, dataset, splits, hw
        self.key, self.log = key, log
        self.out = Path(args.out)
        self.kitti_protocol = None
        self._baselines: dict[int, tuple[Any, dict]] = {}

    # --- training ---------------------------------------------------------------------
    def train_options(self, seed: int) -> dict:
        """ultralytics' trainer at rect 640 wide: no mosaic (rect turns it off), shuffled, seeded batches.

        All kitti_tiny frames share one rect batch shape, so ultralytics keeps shuffling on. SGD
        with a one-epoch warm-up; ``workers=0`` keeps augmentation in this process, seeded.
        """
        a = self.args
        return {"imgsz": a.width, "rect": True, "batch": a.batch, "lr0": a.lr, "seed": seed, "warmup_epochs": 1,
                "deterministic": True, "workers": 0, "plots": False}

    def train(self, model, fold: int, epochs: int, out_dir: Path, seed: int, *, every_epoch: bool, teacher=None,
              class_weights: dict[str, float] | None = None):
        """Train ``epochs`` on the fold's training frames; return the model after the LAST epoch."""
        from ultralytics.nn.tasks import load_checkpoint

        from detprune.data.convert import write_yolo_dataset
        from detprune.adapters.yolo.trainer import finetune_yolo

        train, val = self.splits[fold]
        data = write_yolo_dataset(train, val, out_dir / "dataset")
        options = {**self.train_options(seed), "val": every_epoch, "exist_ok": True}
        if teacher is not None:
            options[distill_keyword()] = teacher
        if class_weights:
            options["class_weights"] = class_weights
        result = finetune_yolo(model, data, epochs=epochs, out_dir=out_dir / "finetune", **options)
        torch.set_num_threads(self.args.threads)
        last, _ = load_checkpoint(str(result.last))
        for p in last.parameters():
            p.requires_grad_(p.is_floating_point())
        return self.adapter.prepare_for_pruning(last.float()), result.run_dir

    # --- baselines --------------------------------------------------------------------
    def baseline_settings(self, fold: int) -> dict:
        import ultralytics

        a = self.args
        return {"model": a.model, "weights": str(a.weights), "data": str(Path(a.data).resolve()), "folds": a.folds,
                "fold_seed": a.fold_seed, "fold": fold, "epochs": a.baseline_epochs, "hw": list(self.hw),
                "threads": a.threads, "ultralytics": ultralytics.__version__, "torch": torch.__version__,
                **self.train_options(a.seed), "init_seed": a.seed}  # the new head's initialisation

    def baseline_dir(self, fold: int) -> Path:
        return self.out / "cache" / f"baseline-{self.key(self.baseline_settings(fold))}"

    def baseline(self, fold: int):
        """(model, info) of the fold's baseline, trained once and cached under a key of every setting."""
        if fold in self._baselines:
            return self._baselines[fold]
        folder = self.baseline_dir(fold)
        checkpoint = folder / "baseline.pt"
        if checkpoint.is_file():
            model = self.adapter.prepare_for_pruning(self.adapter.load_checkpoint(checkpoint))
            info = json.loads((folder / "info.json").read_text())
            self.log(f"baseline fold {fold}: cached {checkpoint}")
        else:
            a = self.args
            train, _ = self.splits[fold]
            self.log(f"baseline fold {fold}: training {a.baseline_epochs} epochs on {len(train)} frames at "
                     f"{self.hw[1]}x{self.hw[0]}")
            tick = time.perf_counter()
            model = self.adapter.load(
                a.model, weights=a.weights, class_names=self.dataset.class_names, init_seed=a.seed
            )
            model, run_dir = self.train(model, fold, a.baseline_epochs, folder, a.seed, every_epoch=True)
            info = {"settings": self.baseline_settings(fold), "curve": read_curve(run_dir / "results.csv"),
                    "seconds": time.perf_counter() - tick}
            self.adapter.save(model, checkpoint, meta={"accuracy_baseline": info["settings"]})
            write_text(folder / "info.json", json.dumps(info, indent=2) + "\n")
            self.log(f"baseline fold {fold}: trained in {info['seconds']:.0f} s; last val mAP50 "
                     f"{_last(info['curve'], 'mAP50')} (ultralytics validator)")
        self._baselines[fold] = (model, info)
        return model, info

    def curve(self, fold: int) -> list[dict]:
        return self.baseline(fold)[1]["curve"]

    def baseline_onnx(self, fold: int) -> Path:
        path = self.baseline_dir(fold) / "baseline.onnx"
        if not path.is_file():
            self.export(self.baseline(fold)[0], path)
        return path

    # --- cells ------------------------------------------------------------------------
    def past_stop(self) -> bool:
        """Whether the wall clock (UTC) is past ``--stop-at`` (HH:MM, today)."""
        if not self.args.stop_at:
            return False
        now = time.gmtime()
        hour, minute = (int(x) for x in self.args.stop_at.split(":"))
        return (now.tm_hour, now.tm_min) >= (hour, minute)

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
        return self._cached(self.cell_dir(cell, fold), self.cell_settings(cell, fold)) is not None

    def unsupported(self, cell: Cell) -> str | None:
        from detprune.pruning import prune_model

        allocation, widths_from = split_allocation(cell.allocation)
        if allocation != "global" and not _accepts(prune_model, "allocation"):
            return f"allocation '{allocation}' is not in this prune_model yet"
        if widths_from is not None and not _accepts(prune_model, "width_scores"):
            return "widths from another criterion are not in this prune_model yet"
        if cell.class_weights and "class_weights" not in _criterion_parameters(split_criterion(cell.criterion)[0]):
            return f"{cell.criterion} takes no class weights"
        if cell.distill and distill_keyword() is None:
            return "distilled fine-tuning is not in this finetune_yolo yet"
        return None

    def _cached(self, folder: Path, settings: dict) -> dict | None:
        done = folder / "result.json"
        if done.is_file():
            cached = json.loads(done.read_text())
            if cached.get("settings") == settings:
                return {**cached, "cached": True}
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
        write_text(folder / "result.json", json.dumps(result, indent=2) + "\n")
        return result

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
        cached = self._cached(folder, settings)
        if cached:
            return cached
        tick = time.perf_counter()
        return self._finish(folder, settings, "unpruned", fold, self.baseline(fold)[0], {}, tick)

    def same_budget(self, fold: int) -> dict:
        """The baseline trained ``--finetune-epochs`` more with the fine-tunes' settings."""
        a = self.args
        folder = self.out / "cells" / "same_budget" / f"fold{fold}"
        settings = {**self._settings(fold), **self.train_options(a.seed)}
        cached = self._cached(folder, settings)
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
        cached = self._cached(folder, settings)
        if cached:
            return cached
        tick = time.perf_counter()
        base = self.baseline(fold)[0]
        model = copy.deepcopy(base)
        allocation, widths_from = split_allocation(cell.allocation)
        weights = parse_class_weights(cell.class_weights, list(self.dataset.class_names))
        scores, scorer = self.score(model, fold, cell.criterion, cell.seed, weights)
        options = {"allocation": allocation} if _accepts(prune_model, "allocation") else {}
        if widths_from is not None:  # widths allocated on the other criterion's scores, channels chosen by this one
            options["width_scores"] = self.score(model, fold, widths_from, cell.seed, weights)[0]
        if joint_subsets(cell):  # CATRO: the trace-ratio subset at each width the allocation gives
            options["subsets"] = scorer
        scored = time.perf_counter()
        target = {"target_flops": cell.target}
        if allocation == "latency":  # HALP: the knapsack on a measured latency table, the target its prediction
            target = {"target_latency": cell.target}
            options.update(allocation="cost", cost="latency", latency_table=self.latency_table(base))
        pruned = prune_model(self.adapter, model, scores, round_to=a.round_to, imgsz=self.hw, **target, **options)
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

    def latency_table(self, model):
        """The ONNX Runtime CPU latency table of the baseline architecture at the benchmark's input
        (one for all folds: their baselines share the architecture), kept under OUT/latency_tables."""
        from detprune.pruning.latency_measure import latency_table

        return latency_table(self.adapter, model, backend="onnxruntime", imgsz=self.hw, threads=self.args.threads,
                             round_to=self.args.round_to, cache=self.out / "latency_tables", say=self.log)

    def score(
        self, model, fold: int, criterion: str, seed: int, class_weights: dict[str, float]
    ) -> tuple[dict, object]:
        """(channel scores, the criterion that measured them) of ``criterion`` on the fold's
        training frames (CAR: its first ``--car-images``)."""
        from detprune.criteria import get_criterion
        from detprune.workflow.stages import score_channels

        train = self.splits[fold][0]
        name = split_criterion(criterion)[0]
        if name == "car":
            train = DetectionSet(
                list(train.class_names), list(train.samples)[: self.args.car_images], name="car-held-out"
            )
            plan = get_criterion("car", **criterion_options("car", seed)).planned_channels(self.adapter, model)
            passes = 1 + sum(len(c) for c in plan.values())
            self.log(f"car fold {fold}: {CAR_OPTIONS['metric']} metric, {passes} evaluations ({len(plan)} layers x "
                     f"<= {CAR_OPTIONS['max_channels_per_layer']} sampled channels, + 1) x {len(train)} frames")
        tick = time.perf_counter()
        scorer = get_criterion(name, **criterion_options(criterion, seed, class_weights))
        scores = score_channels(self.adapter, model, train, scorer, imgsz=self.hw, batch_size=self.args.batch)
        if name == "car":
            self.log(f"car fold {fold}: scored in {time.perf_counter() - tick:.0f} s")
        return scores, scorer

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
        write_text(folder / "result.json", json.dumps(updated, indent=2) + "\n")
        return {**updated, "cached": True}

    # --- cost -------------------------------------------------------------------------
    def export(self, model, path: Path) -> Path:
        from detprune.export.onnx import export_onnx

        example = self.adapter.example_inputs(model, self.hw, batch_size=1)
        export_onnx(self.adapter.export_module(model), example, path, check=False)
        return path

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


def distill_keyword() -> str | None:
    """The teacher argument of ``finetune_yolo`` once distillation lands there (None before)."""
    from detprune.adapters.yolo.trainer import finetune_yolo

    for name in ("teacher", "teacher_model", "distill_from"):
        if _accepts(finetune_yolo, name):
            return name
    return None


def read_curve(path: Path) -> list[dict]:
    """Per-epoch validation from ultralytics' results.csv: epoch, mAP50, mAP50-95 (points)."""
    if not path.is_file():
        return []
    curve = []
    with path.open() as f:
        for row in csv.DictReader(f):
            row = {k.strip(): v for k, v in row.items()}
            curve.append({"epoch": int(float(row["epoch"])), "mAP50": 100 * float(row["metrics/mAP50(B)"]),
                          "mAP50-95": 100 * float(row["metrics/mAP50-95(B)"])})
    return curve


def _last(curve: list[dict], key: str) -> str:
    return f"{curve[-1][key]:.1f}" if curve else "-"
