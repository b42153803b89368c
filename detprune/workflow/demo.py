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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from detprune.evaluation.report import Report
from detprune.utils.atomic import write_text


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
    # SGD at 0.01 with a one-epoch warm-up: a from-scratch baseline learns the scenes in ~30
    # short epochs this way, where ultralytics' automatic choice (AdamW, small lr) needs far more.
    train_options: dict = field(default_factory=lambda: {"lr": 0.01, "warmup_epochs": 1})

    def as_dict(self) -> dict:
        return {**asdict(self), "criteria": list(self.criteria)}


def run_demo(settings: DemoSettings, log: Callable[[str], None] = print) -> Report:
    from detprune.adapters import get_adapter
    from detprune.data.loader import load_train_val
    from detprune.data.synthetic import generate_scenes
    from detprune.evaluation.plots import save_report_plots
    from detprune.pruning import prune_model
    from detprune.workflow.measure import summarise
    from detprune.workflow.stages import finetune_variant, score_channels, seeded_subset

    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.yaml", yaml.safe_dump(settings.as_dict(), sort_keys=False))
    seconds: dict[str, float] = {}
    steps = 3 + len(settings.criteria)  # synthesise, baseline, one per criterion, report

    tick = time.perf_counter()
    data = generate_scenes(out / "data", num_images=settings.num_images, seed=settings.seed,
                           width=settings.width, height=settings.height)
    train, val = load_train_val(data, val_count=settings.val_images, seed=settings.seed)
    seconds["synthesise"] = time.perf_counter() - tick
    log(f"[1/{steps}] {settings.num_images} synthetic driving scenes ({settings.width}x{settings.height}): "
        f"{len(train)} to train on, {len(val)} to evaluate on, in {data}")

    tick = time.perf_counter()
    log(f"[2/{steps}] training the {settings.model} baseline from scratch for {settings.baseline_epochs} epochs")
    adapter = get_adapter(settings.model)
    model = adapter.load(settings.model, class_names=train.class_names)
    train_options = dict(imgsz=settings.imgsz, batch=settings.batch, seed=settings.seed, **settings.train_options)
    model = finetune_variant(adapter, model, train, val, epochs=settings.baseline_epochs,
                             out_dir=out / "baseline", **train_options)
    model = adapter.prepare_for_pruning(model)
    adapter.save(model, out / "baseline" / "baseline.pt")
    seconds["baseline"] = time.perf_counter() - tick

    def summary(m, folder: Path, name: str, **info):
        return summarise(adapter, m, val, imgsz=settings.imgsz, batch_size=settings.batch,
                         latency_runs=settings.latency_runs, onnx_path=folder / f"{name}.onnx", info=info)

    report = Report(run_info={"demo": settings.as_dict(), "seconds": seconds})
    report.add("baseline", summary(model, out / "baseline", "baseline", checkpoint="baseline/baseline.pt"))
    scored = seeded_subset(train, settings.score_images, settings.seed)

    for step, criterion in enumerate(settings.criteria, start=3):
        log(f"[{step}/{steps}] {criterion}: score, prune to {settings.target_flops:g} of the FLOPs, "
            f"fine-tune {settings.finetune_epochs} epochs, evaluate")
        tick = time.perf_counter()
        folder = out / criterion
        scores = score_channels(adapter, model, scored, criterion, imgsz=settings.imgsz, batch_size=settings.batch)
        pruned = prune_model(adapter, copy.deepcopy(model), scores, target_flops=settings.target_flops,
                             imgsz=settings.imgsz)
        tuned = finetune_variant(adapter, pruned.model, train, val, epochs=settings.finetune_epochs,
                                 out_dir=folder, **train_options)
        adapter.save(tuned, folder / "pruned.pt", meta={"criterion": criterion, "pruning": pruned.as_dict()})
        report.add(criterion, summary(tuned, folder, "pruned", checkpoint=f"{criterion}/pruned.pt", criterion=criterion,
                                      flops_kept=pruned.achieved["flops"], finetune_epochs=settings.finetune_epochs))
        seconds[criterion] = time.perf_counter() - tick

    log(f"[{steps}/{steps}] report")
    report.run_info["seconds"] = seconds
    report.save(out)
    save_report_plots(report, out)
    return report
