"""Box-weighted saliency scoring time against a plain forward + backward of the same model.

A plain forward + backward of the detection utility over the same images and batch size is
the physical limit of any gradient criterion: saliency adds hooks, weight maps and one
reduction per activation, and saves the weight-gradient kernels (parameters do not require
gradients while scoring). Prints both times (median of ``--repeats``) and their ratio; the
target is a ratio of at most 1.3.

    python benchmarks/bench_saliency.py --model yolov8n.yaml --imgsz 320 --batch-size 8 --images 16

Images: the real KITTI frames beside the repository when present (``--data``), otherwise
synthetic driving scenes generated into a temporary folder. Batches are read once before
timing, so both sides time the network alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")
os.environ.setdefault("DETPRUNE_QUIET", "1")

from detprune.adapters import get_adapter  # noqa: E402
from detprune.criteria.saliency import BoxWeightedSaliency  # noqa: E402
from detprune.data.batch import iter_batches  # noqa: E402
from detprune.data.loader import load_dataset  # noqa: E402

KITTI_TINY = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kitti_tiny"


def dataset_for(args: argparse.Namespace, scratch: Path):
    if args.data:
        return load_dataset(args.data)
    if (KITTI_TINY / "training" / "label_2").is_dir():
        return load_dataset(KITTI_TINY)
    from detprune.data.synthetic import generate_scenes

    return load_dataset(generate_scenes(scratch / "scenes", args.images, seed=0, progress=False))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(work, device: torch.device) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of ``work()``.

    On a shared CPU machine the wall time carries other people's load; the process's CPU
    time does not, so both are reported.
    """
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def plain_forward_backward(adapter, model, batches, device) -> tuple[float, float]:
    """Utility forward + backward with the model's own gradient settings (weights included)."""
    model.eval()

    def work():
        for batch in batches:
            adapter.detection_utility(model, batch).backward()

    elapsed = timed(work, device)
    model.zero_grad(set_to_none=True)
    return elapsed


def saliency_scoring(adapter, model, batches, device) -> tuple[float, float]:
    criterion = BoxWeightedSaliency(progress=False)
    return timed(lambda: criterion.score(adapter, model, batches), device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="yolov8n.yaml")
    parser.add_argument(
        "--data", default=None, help="dataset (default: kitti_tiny beside the repository, else synthetic)"
    )
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (on a loaded machine 1 avoids timing other processes through thread waits)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as scratch:
        dataset = dataset_for(args, Path(scratch))
        with_boxes = [s for s in dataset.samples if s.num_objects > 0][: args.images]
        batches = [b.to(device) for b in iter_batches(with_boxes, args.imgsz, args.batch_size)]
    adapter = get_adapter(args.model)
    model = adapter.prepare_for_pruning(adapter.load(args.model, class_names=dataset.class_names)).to(device)

    plain_forward_backward(adapter, model, batches, device)  # warm-up: allocator, kernels, ultralytics caches
    saliency_scoring(adapter, model, batches, device)
    plain, scoring = [], []
    for _ in range(args.repeats):  # interleaved, so load drifts hit both sides alike
        plain.append(plain_forward_backward(adapter, model, batches, device))
        scoring.append(saliency_scoring(adapter, model, batches, device))
    threads = torch.get_num_threads() if device.type == "cpu" else None
    print(f"model {args.model}, {len(with_boxes)} images at {args.imgsz} px, batch {args.batch_size}, "
          f"device {device}{f' ({threads} threads)' if threads else ''}, median of {args.repeats}")
    for kind, column in (("wall", 0), ("cpu", 1)):
        plain_s = statistics.median(run[column] for run in plain)
        scoring_s = statistics.median(run[column] for run in scoring)
        ratio = scoring_s / plain_s
        print(f"[{kind}] plain forward+backward {plain_s:.3f} s, saliency scoring {scoring_s:.3f} s, "
              f"ratio {ratio:.2f}x (target <= 1.30x: {'met' if ratio <= 1.3 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
