"""Accuracy at the cut on real KITTI frames: one hold-out split, paired bootstrap intervals.

The question: at a FLOPs target, which criterion x allocation x fine-tune keeps the most
accuracy, above all on pedestrians, cyclists and small objects, measured so that an ordering
claimed survives resampling the frames. The protocol, and why:

- One seeded split of the frames (``detprune.data.splits``): ``--val`` frames for the figures,
  ``--tune`` frames carved from train for every choice of a hyperparameter, the rest to fit on.
- Baseline: the architecture yaml with the COCO backbone+neck (head new), ``--baseline-epochs``
  at 640 wide with rect batches, validated on the tuning split every epoch (the curve is kept and
  plotted, to see it flatten); deterministic, cached under a key of its settings, resumed from its
  last epoch if interrupted.
- Every row fine-tunes ``--finetune-epochs`` from that baseline and reports its LAST epoch; the
  "same budget" row trains the unpruned baseline the same epochs.
- Headline evaluation as a user's validator sees the model: rect batches at 640 wide
  (ultralytics' ``val``), on the val split.
- Every row's difference to the same-budget row is a paired bootstrap over val frames (the same
  resampled frames for both models), 95% interval beside the difference.

    python benchmarks/kitti_accuracy.py --baselines-only      # train (cache, resume) the baseline
    python benchmarks/kitti_accuracy.py                       # the table
    python benchmarks/kitti_accuracy.py --quick               # kitti_tiny, minutes
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from kitti_rows import Row, RowRunner  # noqa: E402  (this benchmark's own rows)
from detprune.adapters.yolo import YoloAdapter  # noqa: E402
from detprune.data.convert import write_yolo_dataset  # noqa: E402
from detprune.data.loader import load_dataset  # noqa: E402
from detprune.data.splits import holdout_split  # noqa: E402
from detprune.errors import BadInputError, DetpruneError  # noqa: E402
from detprune.adapters.yolo.trainer import RUN_NAME, finetune_yolo  # noqa: E402
from detprune.utils.atomic import write_text  # noqa: E402
from harness.baseline import baseline_folder, cached_baseline  # noqa: E402
from harness.curves import read_curve  # noqa: E402
from harness.log import past_stop, timed_log  # noqa: E402
from harness.paths import SHARED, add_detector_arguments  # noqa: E402
from harness.rect import add_training_arguments, rect_hw, rect_train_options  # noqa: E402

# 50% FLOPs: the flagship against Taylor; box weighting isolated (saliency with the loss utility is
# box-weighted Taylor); data-free and random floors
DEFAULT_ROWS = ("taylor/cost", "saliency/cost", "saliency:utility=loss/cost", "saliency/global", "l1/cost",
                "random/cost")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_detector_arguments(p, SHARED / "data" / "kitti_2k")
    p.add_argument("--val", type=int, default=1000, help="frames held out for the reported figures")
    p.add_argument("--tune", type=int, default=200, help="frames carved from train for every hyperparameter choice")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the split")
    add_training_arguments(p, baseline_epochs=40, finetune_epochs=10)
    p.add_argument("--seed", type=int, default=0, help="seed of the new head, scoring order and training")
    p.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads")
    p.add_argument("--target", type=float, default=0.5, help="FLOPs kept by the grid of rows")
    p.add_argument("--rows", default=",".join(DEFAULT_ROWS),
                   help="rows at --target, each CRITERION[:KEY=VALUE]/ALLOCATION[/distill=W]")
    p.add_argument("--distill-weights", default="0.5,2",
                   help="distillation weights tried on the best row, chosen on the tuning split; '' = no distillation")
    p.add_argument("--extra-targets", default="0.7,0.3", help="targets run for the best configuration (tuning split)")
    p.add_argument("--eval-extra", action="append", default=[], metavar="DIR",
                   help="also evaluate every row's final model on this labelled KITTI or YOLO folder (repeatable)")
    p.add_argument("--score-images", type=int, default=256, help="fit frames the criteria score on")
    p.add_argument("--round-to", type=int, default=8)
    p.add_argument("--latency-runs", type=int, default=30, help="interleaved ONNX Runtime runs per row (0 = none)")
    p.add_argument("--bootstrap", type=int, default=1000, help="paired bootstrap resamples over val frames")
    p.add_argument("--stop-at", default=None, help="UTC time HH:MM after which no new row starts")
    p.add_argument("--baselines-only", action="store_true", help="train (cache, resume) the baseline, then stop")
    p.add_argument("--report-only", action="store_true",
                   help="tables and plots from the rows already cached; nothing is trained")
    p.add_argument("--quick", action="store_true", help="kitti_tiny, 40/15/20 split, 5+2 epochs: a check in minutes")
    p.add_argument("--out", default="runs/kitti_accuracy")
    args = p.parse_args(argv)
    if args.quick:
        args.data = str(SHARED / "data" / "kitti_tiny")
        args.val, args.tune, args.baseline_epochs, args.finetune_epochs = 20, 15, 5, 2
        args.rows, args.distill_weights, args.extra_targets = "taylor/cost,l1/cost", "", ""
        args.score_images, args.latency_runs, args.bootstrap = 16, 5, 200
        args.out = args.out if args.out != "runs/kitti_accuracy" else "runs/kitti_accuracy_quick"
    try:
        args.rows = [Row.parse(t.strip(), args.target) for t in args.rows.split(",") if t.strip()]
        args.distill_weights = [float(x) for x in args.distill_weights.split(",") if x.strip()]
        args.extra_targets = [float(x) for x in args.extra_targets.split(",") if x.strip()]
    except (BadInputError, ValueError) as err:
        p.error(str(err))
    if not all(0 < t < 1 for t in [args.target, *args.extra_targets]):
        p.error("targets are fractions of the FLOPs kept, in (0, 1)")
    if not all(w > 0 for w in args.distill_weights):
        p.error("distillation weights are > 0")
    if args.stop_at is not None and not re.fullmatch(r"([01]?\d|2[0-3]):[0-5]\d", args.stop_at):
        p.error("--stop-at is a UTC time HH:MM")
    return args


class Bench:
    """The split, the cached baseline and the rows of one benchmark run."""

    def __init__(self, args: argparse.Namespace, log):
        self.args, self.log = args, log
        self.adapter = YoloAdapter()
        self.out = Path(args.out)
        self.dataset = load_dataset(args.data)
        self.split = holdout_split(self.dataset, val=args.val, tune=args.tune, seed=args.split_seed)
        self.extra_sets = {f"extra{i}": self._extra_set(path) for i, path in enumerate(args.eval_extra, 1)}

    @staticmethod
    def _extra_set(path: str):
        """A labelled folder every row is also evaluated on; one line if it is missing or has no labels."""
        if not Path(path).exists():
            raise BadInputError(f"--eval-extra {path}: no such folder")
        dataset = load_dataset(path)
        if not len(dataset) or not sum(len(s.boxes) for s in dataset):
            raise BadInputError(f"--eval-extra {path}: holds no labelled frames")
        return dataset

    def canvas_height(self) -> int:
        """The rect canvas height every frame of the set shares at ``--width`` (224 for KITTI at 640)."""
        return rect_hw(self.dataset, self.args.width)[0]

    def fit_yaml(self) -> Path:
        """The YOLO dataset the baseline trained on (fit frames; val = the tuning split)."""
        return self.baseline_dir() / "dataset" / "data.yaml"

    def train_options(self, seed: int) -> dict:
        """ultralytics' trainer at 640 wide with rect batches; SGD, a one-epoch warm-up, seeded, in-process."""
        return rect_train_options(self.args, seed)

    def baseline_settings(self) -> dict:
        import ultralytics

        a = self.args
        return {"model": a.model, "weights": str(a.weights), "data": str(Path(a.data).resolve()),
                "split": {"val": a.val, "tune": a.tune, "seed": a.split_seed}, "epochs": a.baseline_epochs,
                "threads": a.threads, "ultralytics": ultralytics.__version__, "torch": torch.__version__,
                **self.train_options(a.seed), "init_seed": a.seed}

    def baseline_dir(self) -> Path:
        return baseline_folder(self.out, self.baseline_settings())

    def baseline(self):
        """(model, info) of the baseline: trained once, cached, resumed from its last epoch if interrupted."""
        return cached_baseline(self.adapter, self.baseline_dir(), self.baseline_settings(), self._train_baseline,
                               self.log)

    def _train_baseline(self):
        a, folder = self.args, self.baseline_dir()
        run = folder / "finetune"
        last = run / RUN_NAME / "weights" / "last.pt"
        previous = 0.0
        if last.is_file():
            previous = self._previous_seconds(folder)  # machine time the interrupted run had already spent
            self.log(f"baseline: resuming the interrupted run from {last}")
            result = finetune_yolo(None, None, epochs=None, out_dir=run, resume=True,
                                   progress_label="baseline epochs")
        else:
            data = write_yolo_dataset(self.split.fit, self.split.tune, folder / "dataset")
            self.log(f"baseline: training {a.baseline_epochs} epochs on {len(self.split.fit)} frames, "
                     f"validating on the {len(self.split.tune)} tuning frames")
            model = self.adapter.load(a.model, weights=a.weights, class_names=self.dataset.class_names,
                                      init_seed=a.seed)
            options = {**self.train_options(a.seed), "val": True, "progress_label": "baseline epochs"}
            result = finetune_yolo(model, data, epochs=a.baseline_epochs, out_dir=run, exist_ok=True, **options)
        torch.set_num_threads(a.threads)
        from ultralytics.nn.tasks import load_checkpoint

        model, _ = load_checkpoint(str(result.last))
        return model.float(), {"curve": read_curve(result.run_dir / "results.csv"), "seconds_before": previous}

    @staticmethod
    def _previous_seconds(folder: Path) -> float:
        """Machine time an interrupted baseline had already spent (ultralytics' results.csv keeps it)."""
        curve = folder / "finetune" / RUN_NAME / "results.csv"
        if not curve.is_file():
            return 0.0
        import csv

        with curve.open() as f:
            rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(f)]
        return float(rows[-1].get("time", 0.0)) if rows else 0.0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    log = timed_log(time.perf_counter(), clock=True)
    bench = Bench(args, log)
    s = bench.split
    log(f"data: {len(bench.dataset)} frames: fit {len(s.fit)}, tune {len(s.tune)}, val {len(s.val)} "
        f"(split seed {args.split_seed}); classes {', '.join(bench.dataset.class_names)}")
    write_text(bench.out / "split.json", json.dumps(s.ids(), indent=1) + "\n")
    model, info = bench.baseline()
    if args.baselines_only:
        log("baseline cached; stopping (--baselines-only)")
        return 0
    runner = RowRunner(bench, model, log)
    results = run_rows(args, runner, log)
    report = {"command": "python benchmarks/kitti_accuracy.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "split": {k: len(v) for k, v in s.ids().items()}, "baseline": info, "rows": results,
              "extra_sets": {k: str(p) for k, p in zip(bench.extra_sets, args.eval_extra)}}
    write_text(bench.out / "results.json", json.dumps(report, indent=2, default=str) + "\n")
    from kitti_report import write_report

    write_report(bench, report, log)
    return 0


def run_rows(args, runner: RowRunner, log) -> list[dict]:
    """Unpruned and same budget; the grid at --target; distillation and the other targets for the
    configurations best on the TUNING split (val is never read for a choice)."""
    results = []

    def run(label: str, measure) -> dict | None:
        if (args.report_only or past_stop(args.stop_at)) and not measure(cached_only=True):
            log(f"{label}: not run" + ("" if args.report_only else f" (past --stop-at {args.stop_at} UTC)"))
            return None
        result = measure()
        results.append(result)
        v, t = result["val"], result["tune"]
        took = "cached" if result.get("cached") else f"{result['seconds']['total']:.0f} s"
        log(f"{label}: val mAP50 {v['mAP50']:.1f} (tune {t['mAP50']:.1f}), Ped {_pt(v['AP Pedestrian'])}, "
            f"Cyc {_pt(v['AP Cyclist'])}, AP_small {_pt(v['AP_small'])}, FLOPs kept {result['flops_kept']:.1%}"
            f" ({took})")
        return result

    run("unpruned", lambda cached_only=False: runner.unpruned(cached_only))
    run("same budget", lambda cached_only=False: runner.same_budget(cached_only))
    grid = [run(row.token(), lambda cached_only=False, row=row: runner.row(row, cached_only)) for row in args.rows]
    ranked = sorted((r for r in grid if r), key=lambda r: -r["tune"]["mAP50"])
    if ranked and args.distill_weights:
        best = Row.parse(ranked[0]["row"], args.target)
        tried = [run(f"{best.token()} distill={w:g}", lambda cached_only=False, w=w: runner.row(
            Row(best.target, best.criterion, best.allocation, w), cached_only)) for w in args.distill_weights]
        tried = [r for r in tried if r]
        if tried:
            chosen = max(tried, key=lambda r: r["tune"]["mAP50"])
            weight = Row.parse(chosen["row"], args.target).distill
            log(f"distillation weight {weight:g} chosen on the tuning split")
            for other in ranked[1:2]:
                o = Row.parse(other["row"], args.target)
                run(f"{o.token()} distill={weight:g}", lambda cached_only=False, o=o: runner.row(
                    Row(o.target, o.criterion, o.allocation, weight), cached_only))
    pruned = [r for r in results if r["kind"] == "pruned"]
    if pruned and args.extra_targets:
        best = Row.parse(max(pruned, key=lambda r: r["tune"]["mAP50"])["row"], args.target)
        for target in args.extra_targets:
            row = Row(target, best.criterion, best.allocation, best.distill)
            run(row.token() + f" at {target:g}", lambda cached_only=False, row=row: runner.row(row, cached_only))
    return results


def _pt(value) -> str:
    return "-" if value is None else f"{value:.1f}"


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DetpruneError as err:
        print(f"kitti_accuracy: error: {err}", file=sys.stderr)
        sys.exit(2)
