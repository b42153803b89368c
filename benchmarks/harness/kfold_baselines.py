"""accuracy.py's fold baselines: trained once per fold, cached under a key of every setting, and the
fold-level work done with them (training, scoring, ONNX export, the latency table).

accuracy_cells.Runner adds the cells on top; the tools that read the benchmark's cache without
training (catro_ridge, equal_latency, latency_table_fit) open a fold with ``cached_fold``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import torch

from detprune.data.types import DetectionSet
from detprune.errors import DetpruneError
from harness.baseline import cached_baseline
from harness.cache import settings_key
from harness.criteria import CAR_OPTIONS, accepts, criterion_options, split_criterion
from harness.curves import last_value, read_curve
from harness.kfold_args import parse_kfold_args
from harness.rect import rect_hw, rect_train_options


def distill_keyword() -> str | None:
    """The teacher argument of ``finetune_yolo`` once distillation lands there (None before)."""
    from detprune.adapters.yolo.trainer import finetune_yolo

    for name in ("teacher", "teacher_model", "distill_from"):
        if accepts(finetune_yolo, name):
            return name
    return None


class FoldBaselines:
    """Trains, caches and serves the k-fold baselines of one accuracy-benchmark run."""

    def __init__(self, args, adapter, dataset: DetectionSet, splits, hw: tuple[int, int], key: Callable, log: Callable):
        self.args, self.adapter, self.dataset, self.splits, self.hw = args, adapter, dataset, splits, hw
        self.key, self.log = key, log
        self.out = Path(args.out)
        self._baselines: dict[int, tuple[Any, dict]] = {}

    # --- training ---------------------------------------------------------------------
    def train_options(self, seed: int) -> dict:
        """ultralytics' trainer at rect 640 wide (see ``harness.rect``); all kitti_tiny frames share
        one rect batch shape, so ultralytics keeps shuffling on."""
        return rect_train_options(self.args, seed)

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
        a, folder = self.args, self.baseline_dir(fold)

        def train_it():
            train, _ = self.splits[fold]
            self.log(f"baseline fold {fold}: training {a.baseline_epochs} epochs on {len(train)} frames at "
                     f"{self.hw[1]}x{self.hw[0]}")
            model = self.adapter.load(a.model, weights=a.weights, class_names=self.dataset.class_names,
                                      init_seed=a.seed)
            model, run_dir = self.train(model, fold, a.baseline_epochs, folder, a.seed, every_epoch=True)
            curve = read_curve(run_dir / "results.csv")
            self.log(f"baseline fold {fold}: last val mAP50 {last_value(curve, 'mAP50')} (ultralytics validator)")
            return model, {"curve": curve}

        self._baselines[fold] = cached_baseline(self.adapter, folder, self.baseline_settings(fold), train_it, self.log,
                                                label=f"baseline fold {fold}")
        return self._baselines[fold]

    def curve(self, fold: int) -> list[dict]:
        return self.baseline(fold)[1]["curve"]

    def baseline_onnx(self, fold: int) -> Path:
        path = self.baseline_dir(fold) / "baseline.onnx"
        if not path.is_file():
            self.export(self.baseline(fold)[0], path)
        return path

    # --- scoring and cost -------------------------------------------------------------
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

    def latency_table(self, model):
        """The ONNX Runtime CPU latency table of the baseline architecture at the benchmark's input
        (one for all folds: their baselines share the architecture), kept under OUT/latency_tables."""
        from detprune.pruning.latency_measure import latency_table

        return latency_table(self.adapter, model, backend="onnxruntime", imgsz=self.hw, threads=self.args.threads,
                             round_to=self.args.round_to, cache=self.out / "latency_tables", say=self.log)

    def export(self, model, path: Path) -> Path:
        from detprune.export.onnx import export_onnx

        example = self.adapter.example_inputs(model, self.hw, batch_size=1)
        export_onnx(self.adapter.export_module(model), example, path, check=False)
        return path


def cached_fold(accuracy_args: str, fold: int):
    """(benchmark arguments, baselines, the fold's cached baseline model) for the diagnostic tools that
    read the accuracy benchmark's baselines without training (``catro_ridge.py``, ``latency_table_fit.py``,
    ``equal_latency.py``); ``accuracy_args`` is the benchmark's command line that keyed them."""
    from detprune.adapters.yolo import YoloAdapter
    from detprune.data.folds import kfold_splits
    from detprune.data.loader import load_dataset

    args = parse_kfold_args(accuracy_args.split())
    torch.set_num_threads(args.threads)
    dataset = load_dataset(args.data)
    splits = kfold_splits(dataset, args.folds, seed=args.fold_seed)
    baselines = FoldBaselines(
        args, YoloAdapter(), dataset, splits, rect_hw(dataset, args.width), settings_key, lambda message: None
    )
    if not 0 <= fold < args.folds or not (baselines.baseline_dir(fold) / "baseline.pt").is_file():
        raise DetpruneError(f"no cached baseline for fold {fold}: run benchmarks/accuracy.py --baselines-only "
                            f"{accuracy_args} first")
    return args, baselines, baselines.baseline(fold)[0]
