"""The embedded default run: everything detprune does, on data it makes itself, on a CPU.

1. synthesise KITTI-format driving scenes (no download);
2. train a small YOLO baseline briefly from its yaml;
3. prune it to a FLOPs target with box-weighted saliency and with L1 magnitude;
4. fine-tune both with the same budget;
5. evaluate all three with one protocol, export ONNX, measure CPU latency;
6. write one report (JSON, Markdown, plots) and print the table.

Every number in the output is measured by this run.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from detprune.evaluation.report import Report
from detprune.utils.atomic import write_text
from detprune.workflow.prune_run import PruneSettings, load_inputs, prune_variant, summarise_variant


@dataclass
class DemoSettings:
    out: str = "runs/demo"
    model: str = "yolov8n.yaml"
    num_images: int = 200
    val_images: int = 40
    width: int = 640
    height: int = 192
    imgsz: int = 320
    batch: int = 8
    baseline_epochs: int = 30
    finetune_epochs: int = 8
    target_flops: float = 0.5
    criteria: tuple[str, ...] = ("saliency", "l1")
    score_images: int = 64
    latency_runs: int = 30
    seed: int = 0
    # SGD at 0.01 with a short warm-up: a from-scratch baseline learns the scenes in ~30 short
    # epochs this way, where ultralytics' automatic choice (AdamW, small lr) needs far more.
    finetune_options: dict = field(default_factory=lambda: {"lr0": 0.01, "warmup_epochs": 1})


def run_demo(settings: DemoSettings, log=print) -> Report:
    from detprune.data.synthetic import generate_scenes
    from detprune.evaluation.plots import save_report_plots

    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.yaml", yaml.safe_dump({**vars(settings), "criteria": list(settings.criteria)}, sort_keys=False))
    seconds: dict[str, float] = {}

    tick = time.perf_counter()
    data = generate_scenes(out / "data", num_images=settings.num_images, seed=settings.seed,
                           width=settings.width, height=settings.height)
    seconds["synthesise"] = time.perf_counter() - tick
    log(f"[1/5] {settings.num_images} synthetic scenes ({settings.width}x{settings.height}) in {data}")

    base = PruneSettings(
        model=settings.model, data=str(data), val_count=settings.val_images, imgsz=settings.imgsz,
        batch=settings.batch, score_images=settings.score_images, latency_runs=settings.latency_runs,
        seed=settings.seed, target_flops=settings.target_flops, finetune_epochs=settings.finetune_epochs,
        finetune_options=dict(settings.finetune_options), out=str(out),
    )
    inputs = load_inputs(base)

    tick = time.perf_counter()
    log(f"[2/5] training the {settings.model} baseline for {settings.baseline_epochs} epochs")
    from detprune.data.convert import write_yolo_dataset

    data_yaml = write_yolo_dataset(inputs.train, inputs.val, out / "dataset")
    inputs.model = inputs.adapter.finetune(
        inputs.model, data_yaml, epochs=settings.baseline_epochs, out_dir=out / "baseline",
        imgsz=settings.imgsz, batch=settings.batch, seed=settings.seed, exist_ok=True, **settings.finetune_options,
    )
    inputs.model = inputs.adapter.prepare_for_pruning(inputs.model)
    inputs.adapter.save(inputs.model, out / "baseline.pt")
    seconds["baseline"] = time.perf_counter() - tick

    report = Report(run_info={"demo": {**vars(settings), "criteria": list(settings.criteria)}, "seconds": seconds})
    report.add("baseline", summarise_variant(inputs, inputs.model, base, out, "baseline", checkpoint=str(out / "baseline.pt")))

    for step, criterion in enumerate(settings.criteria):
        log(f"[{3 + step}/5] {criterion}: score, prune to {settings.target_flops:g} of FLOPs, "
            f"fine-tune {settings.finetune_epochs} epochs")
        tick = time.perf_counter()
        variant = replace(base, criterion=criterion, out=str(out / criterion))
        Path(variant.out).mkdir(parents=True, exist_ok=True)
        stage: dict[str, float] = {}
        pruned, result = prune_variant(copy.copy(inputs), variant, Path(variant.out), stage)
        report.add(criterion, summarise_variant(
            inputs, pruned, variant, Path(variant.out), "pruned", checkpoint=str(Path(variant.out) / "pruned.pt"),
            criterion=criterion, flops_kept=result.achieved["flops"], finetune_epochs=settings.finetune_epochs,
        ))
        seconds[criterion] = time.perf_counter() - tick

    log("[5/5] report")
    report.save(out)
    save_report_plots(report, out)
    return report
