"""CATRO's ridge: which channels a regularised trace ratio keeps, read before any fine-tuning.

Every cut gets the widths of saliency's global allocation at ``--target`` FLOPs on the accuracy
benchmark's cached fold baselines (``benchmarks/accuracy.py --baselines-only`` trains them);
only which channels of each group stay differs. For each cut, measured right after pruning
(no fine-tuning, so a reading in minutes, not an hour):

* mAP50 on the fold's held-out frames;
* for CATRO at each ridge, the share of the layers' RoI-feature scatter its subsets keep
  (between-class, within-class), beside what a random half keeps (one half: 50%).

The question it answers: does the paper's ratio (``ridge=0``) throw away the scatter a detector
reads? The fine-tuned answer is the accuracy benchmark's ``catro:ridge=R`` rows.

    python benchmarks/catro_ridge.py --fold 1 --target 0.8
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from detprune.criteria.catro import solve_trace_ratio  # noqa: E402
from detprune.errors import DetpruneError  # noqa: E402
from detprune.pruning import prune_model  # noqa: E402
from detprune.utils.atomic import write_text  # noqa: E402
from harness.kfold_args import add_accuracy_args  # noqa: E402
from harness.kfold_baselines import cached_fold  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fold", type=int, default=1, help="the fold whose cached baseline is cut")
    p.add_argument("--target", type=float, default=0.8, help="FLOPs kept (milder than the benchmark's 0.5: "
                                                             "at 0.5 every cut reads 0 before fine-tuning)")
    p.add_argument("--ridges", default="0,0.5,2,8,inf", help="CATRO ridges to cut with")
    p.add_argument("--baselines", default="saliency,taylor,l1,random", help="criteria cut beside CATRO")
    add_accuracy_args(p)
    p.add_argument("--out", default="runs/catro_ridge.json")
    return p.parse_args(argv)


def scatter_kept(scatter: dict, ridge: float, fraction: float = 0.5) -> tuple[float, float]:
    """Mean over layers of the shares of between- and within-class scatter a ``fraction`` subset keeps."""
    between, within = [], []
    for b, w in scatter.values():
        kept = solve_trace_ratio(b, w, max(1, round(fraction * len(b))), ridge).kept
        between.append(b[kept].sum() / max(b.sum(), 1e-30))
        within.append(w[kept].sum() / max(w.sum(), 1e-30))
    return float(np.mean(between)), float(np.mean(within))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench, runner, base = cached_fold(args.accuracy_args, args.fold)
    hw = runner.hw
    val = runner.splits[args.fold][1]

    def scores_of(token: str):
        return runner.score(copy.deepcopy(base), args.fold, token, bench.seed, {})

    def map50(model) -> float:
        return 100.0 * runner.adapter.evaluate(model, val, imgsz=hw, batch_size=bench.batch, progress=False)["mAP50"]

    def cut(scores, widths, subsets=None) -> float:
        options = {"width_scores": widths} if widths is not scores else {}
        if subsets is not None:
            options["subsets"] = subsets
        pruned = prune_model(runner.adapter, copy.deepcopy(base), scores, round_to=bench.round_to, imgsz=hw,
                             target_flops=args.target, allocation="global", **options)
        return map50(pruned.model)

    rows = [{"cut": "unpruned", "mAP50": map50(base)}]
    print(
        f"fold {args.fold}, {args.target:g} FLOPs kept, widths of saliency / global; unpruned mAP50 "
        f"{rows[0]['mAP50']:.1f}"
    )
    widths, _ = scores_of("saliency")
    for name in args.baselines.split(","):
        scores = widths if name == "saliency" else scores_of(name)[0]
        rows.append({"cut": name, "mAP50": cut(scores, widths)})
        print(f"  {name:18s} mAP50 {rows[-1]['mAP50']:5.1f}", flush=True)
    for text in args.ridges.split(","):
        ridge = float(text)
        scores, catro = scores_of(f"catro:ridge={text}")
        between, within = scatter_kept(catro.last_scatter, ridge)
        rows.append({"cut": f"catro ridge={text}", "ridge": text, "mAP50": cut(scores, widths, catro),
                     "between_kept": between, "within_kept": within})
        print(
            f"  catro ridge={text:8s} mAP50 {rows[-1]['mAP50']:5.1f}   a half of each layer keeps "
            f"{100 * between:.0f}% of its between-class and {100 * within:.0f}% of its within-class scatter",
            flush=True,
        )
    report = {"command": "python benchmarks/catro_ridge.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "fold": args.fold, "target": args.target, "input_hw": list(hw), "rows": rows}
    write_text(Path(args.out), json.dumps(report, indent=2, default=lambda v: None if math.isnan(v) else v) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DetpruneError as err:
        print(f"catro_ridge: error: {err}", file=sys.stderr)
        sys.exit(2)
