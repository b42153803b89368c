"""How long the pruner takes and what it gives: every YOLO family at several FLOPs targets.

For each model (built from its yaml, prepared for pruning) and each target (fraction of the
FLOPs kept) it runs :func:`detprune.pruning.prune_model` with the data-free L1 filter
magnitude criterion and prints parameters and GFLOPs before/after, how close the target was
met, whether the analytic cost model predicted the result exactly, and the time of each step:
``graph`` (measure the model and trace the dependency graph), ``search`` (scores to groups and
the bisection on the cost model) and ``surgery`` (the cuts through Torch-Pruning).

    python benchmarks/bench_surgery.py
    python benchmarks/bench_surgery.py --models yolov8n.yaml --flops 0.5 --imgsz 320 --threads 2

GFLOPs are 2 x MACs as counted by Torch-Pruning at ``--imgsz``. Random-initialised weights:
the cut's location depends on the weights, its cost on the target. Times are wall clock on
this machine, with ``--threads`` intra-op threads (1 by default: on a few shared cores,
OpenMP threads that spin against other processes make everything slower).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")

import torch  # noqa: E402

from detprune.adapters.yolo import YoloAdapter  # noqa: E402
from detprune.criteria import get_criterion  # noqa: E402
from detprune.errors import DetpruneError  # noqa: E402
from detprune.pruning import prune_model  # noqa: E402

MODELS = ("yolov5n.yaml", "yolov8n.yaml", "yolo11n.yaml", "yolo26n.yaml")
TARGETS = (0.7, 0.5, 0.3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--flops", nargs="+", type=float, default=list(TARGETS), help="fractions of the FLOPs kept")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--round-to", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    adapter = YoloAdapter()
    header = (
        "model",
        "target",
        "params",
        "params after",
        "GFLOPs",
        "GFLOPs after",
        "kept",
        "exact",
        "graph s",
        "search s",
        "surgery s",
        "total s",
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|")
    for spec in args.models:
        original = adapter.prepare_for_pruning(adapter.load(spec))
        scores = get_criterion("l1").score(adapter, original, [])
        for target in args.flops:
            model = copy.deepcopy(original)
            start = time.perf_counter()
            try:
                result = prune_model(
                    adapter, model, scores, target_flops=target, round_to=args.round_to, imgsz=args.imgsz
                )
            except DetpruneError as err:
                print(f"| {spec} | {target:.0%} | {err} |")
                continue
            total = time.perf_counter() - start
            b, a, s = result.before, result.after, result.seconds
            row = (
                spec.removesuffix(".yaml"),
                f"{target:.0%}",
                f"{b.params / 1e6:.2f}M",
                f"{a.params / 1e6:.2f}M",
                f"{b.flops / 1e9:.2f}",
                f"{a.flops / 1e9:.2f}",
                f"{result.achieved['flops']:.1%}",
                "yes" if result.predicted == a else "no",
                f"{s['graph']:.2f}",
                f"{s['allocate']:.2f}",
                f"{s['surgery']:.2f}",
                f"{total:.2f}",
            )
            print("| " + " | ".join(row) + " |", flush=True)
    print(f"\nimgsz {args.imgsz}, round_to {args.round_to}, torch threads {args.threads}, "
          f"torch {torch.__version__}, python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
