"""Faster R-CNN before and after pruning: parameters, FLOPs and ONNX Runtime CPU latency.

For each architecture (MobileNetV3-Large-FPN and ResNet-50-FPN by default) the model is built
for KITTI's three classes, prepared (frozen norms -> BatchNorm2d), pruned with the data-free
L1 filter-magnitude criterion to ``--ratio`` (fraction of prunable channels removed) or
``--target-flops`` (fraction of FLOPs kept), and both models are measured:

* FLOPs (2 x MACs) and parameters on the dense path at ``--imgsz``: backbone, FPN, RPN head
  on every level and the box head on the model's test-time proposal budget (1000 proposals
  for these two, the per-image worst case);
* latency of the WHOLE detector (normalisation, backbone, RPN with NMS, RoIAlign, box head,
  post-processing) exported to ONNX (opset 17, fixed input size), timed on ONNX Runtime CPU:
  median and p90 of ``--runs`` after ``--warmup``. The export is not compared with PyTorch
  here: a randomly initialised detector gives many boxes the same score, and equal scores
  may come out in another order (the graph's parity is tested on distinct scores in
  ``tests/test_rcnn_checkpoint_export.py``).

No weights are downloaded: the models are randomly initialised, with seeded random norm
statistics (a fresh model's mean 0 / variance 1 make the backbone's activations vanish and
every box score equal). FLOPs, parameters and the dense part's latency do not depend on
weight values; the post-processing's share does (it scales with the boxes that pass the
score threshold), so latency ratios carry that noise.

    python benchmarks/bench_rcnn.py --imgsz 384 1248 --ratio 0.5
    python benchmarks/bench_rcnn.py --imgsz 192 640 --target-flops 0.5 --archs fasterrcnn_mobilenet_v3_large_fpn

On a shared machine compare medians from one run only.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("DETPRUNE_QUIET", "1")

from detprune.adapters.rcnn import RcnnAdapter  # noqa: E402
from detprune.errors import DetpruneError  # noqa: E402

KITTI3 = ["car", "pedestrian", "cyclist"]
DEFAULT_ARCHS = ["fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_resnet50_fpn"]


def measure(adapter: RcnnAdapter, model, example, args, work: Path, tag: str) -> dict:
    from detprune.runtime import measure_latency
    from detprune.export.onnx import export_onnx
    from detprune.pruning.flops import measure as count

    cost = count(model, example, adapter.dependency_graph_options(model)["forward_fn"])
    path = work / f"{tag}.onnx"
    tick = time.perf_counter()
    export_onnx(
        adapter.export_module(model),
        example[:1],
        path,
        opset=17,
        check=False,
        output_names=["boxes", "scores", "labels"],
    )
    export_s = time.perf_counter() - tick
    latency = measure_latency(
        "onnxruntime", path, list(example[:1].shape), args.warmup, args.runs, threads=args.threads
    )
    return {
        "params": cost.params,
        "flops": cost.flops,
        "latency_ms": latency.median_ms,
        "latency_p90_ms": latency.p90_ms,
        "threads": latency.threads,
        "export_seconds": export_s,
    }


def randomize_norms(model, seed: int = 0) -> None:
    """Seeded norm statistics and affine terms of unit scale, so that activations carry signal."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                m.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(n, generator=generator) * 0.1)


def bench(arch: str, args, work: Path) -> dict:
    from detprune.criteria import get_criterion
    from detprune.pruning.pruner import prune_model

    adapter = RcnnAdapter()
    original = adapter.prepare_for_pruning(adapter.load(arch, class_names=KITTI3))
    randomize_norms(original)
    example = adapter.example_inputs(original, args.imgsz)
    before = measure(adapter, original, example, args, work, f"{arch}-before")

    pruned = copy.deepcopy(original)
    scores = get_criterion("l1").score(adapter, pruned)
    tick = time.perf_counter()
    target = {"ratio": args.ratio} if args.target_flops is None else {"target_flops": args.target_flops}
    result = prune_model(adapter, pruned, scores, imgsz=args.imgsz, round_to=args.round_to, **target)
    prune_s = time.perf_counter() - tick
    after = measure(adapter, pruned, example, args, work, f"{arch}-after")
    return {
        "arch": arch,
        "imgsz": list(example.shape[-2:]),
        "target": target,
        "achieved": result.achieved,
        "prune_seconds": prune_s,
        "fpn_width": [
            original.backbone.fpn.layer_blocks[0][0].out_channels,
            pruned.backbone.fpn.layer_blocks[0][0].out_channels,
        ],
        "before": before,
        "after": after,
    }


def table(rows: list[dict]) -> str:
    head = f"{'model':<40} {'params (M)':>18} {'GFLOPs':>22} {'ORT CPU median (ms)':>27} {'FPN width':>10}"
    lines = [head, "-" * len(head)]
    for r in rows:
        b, a = r["before"], r["after"]
        lines.append(
            f"{r['arch']:<40} "
            f"{b['params'] / 1e6:6.2f} -> {a['params'] / 1e6:6.2f}  "
            f"{b['flops'] / 1e9:7.2f} -> {a['flops'] / 1e9:6.2f} ({a['flops'] / b['flops']:.2f}x) "
            f"{b['latency_ms']:8.1f} -> {a['latency_ms']:7.1f} ({b['latency_ms'] / a['latency_ms']:.2f}x faster) "
            f"{r['fpn_width'][0]:>4} -> {r['fpn_width'][1]}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", nargs="+", default=DEFAULT_ARCHS, help="torchvision fasterrcnn_* names")
    parser.add_argument("--imgsz", nargs="+", type=int, default=[384, 1248], help="H W (or one side) of the input")
    parser.add_argument("--ratio", type=float, default=0.5, help="fraction of prunable channels removed")
    parser.add_argument("--target-flops", type=float, default=None, help="fraction of FLOPs kept (replaces --ratio)")
    parser.add_argument("--round-to", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument(
        "--threads", type=int, default=None, help="ONNX Runtime threads (default: this process's cores)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    args.imgsz = args.imgsz[0] if len(args.imgsz) == 1 else tuple(args.imgsz[:2])
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-rcnn-") as work:
            for arch in args.archs:
                rows.append(bench(arch, args, Path(work)))
                print(f"done {arch}", file=sys.stderr)
    except DetpruneError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    what = f"ratio {args.ratio}" if args.target_flops is None else f"FLOPs target {args.target_flops}"
    print(f"Faster R-CNN, L1 magnitude, {what}, input {rows[0]['imgsz'] if rows else args.imgsz}, "
          f"ONNX Runtime CPU {rows[0]['before']['threads'] if rows else '?'} threads, {args.runs} runs")
    print(table(rows))
    if args.json:
        from detprune.utils.atomic import write_text

        write_text(args.json, json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
