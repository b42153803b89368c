"""Supernet width search (PSE-Net) against uniform and saliency-global allocation on real KITTI frames.

Questions: at 50% of the FLOPs, do widths searched with a supernet beat the pruner's own
allocations once each model is fine-tuned with the same budget? Does the supernet rank subnets
as their fine-tuned accuracy does (Kendall tau), and what does building it cost against
training those subnets separately?

1. the trained YOLOv5n baseline of ``benchmarks/compare_criteria.py`` (its cache; same split:
   15 of kitti_tiny's 75 frames held out, seed 0);
2. saliency scores on the train split order every group's channels; the baseline's weights are
   trained as a width supernet (``--supernet-epochs``, ``--subnets-per-step`` subnets per step,
   the prior updated every epoch) and timed;
3. an evolutionary search (estimate: the masked supernet's mAP50 on the 15 val frames) picks
   widths within [0.9, 1] x ``--target`` of the FLOPs;
4. per seed, fine-tuned ``--finetune-epochs`` and measured on the val frames:
   ``searched``: the searched widths cut from the trained supernet (the method as a whole);
   ``searched-from-baseline``: the same widths cut from the baseline (the allocation alone,
   same starting weights as the others); ``uniform``: the run's cut with ``allocation="uniform"``;
   ``saliency-global``: the run's cut with ``allocation="global"``, reused from compare_criteria's
   runs where their settings match (else rerun here);
5. ``--tau-subnets`` subnets spread over the FLOPs range: each estimated by the supernet, and
   cut from the BASELINE and fine-tuned separately (seed 0); Kendall tau between the two, beside
   the tau of FLOPs alone as a predictor; the supernet's build time vs those trainings' sum.

Every fine-tuned run is cached in ``<out>/runs/<name>/seed<s>/result.json`` with its settings;
the supernet in ``<out>/cache/supernet-<key>/``. Writes ``<out>/results.json`` and ``results.md``.

    flock /tmp/detprune_cpu.lock .venv/bin/python benchmarks/search_widths.py
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from detprune.adapters.yolo import YoloAdapter  # noqa: E402
from detprune.data.loader import load_train_val  # noqa: E402
from detprune.errors import DetpruneError  # noqa: E402
from detprune.pruning.allocation import Limits  # noqa: E402
from detprune.pruning.prior import WidthPrior  # noqa: E402
from detprune.pruning.search import FlopsBudget, cut, evolve, kendall_tau  # noqa: E402
from detprune.pruning.supernet import ChannelMasks, WidthSpace  # noqa: E402
from detprune.pruning.supernet_train import SupernetEstimator, train_supernet  # noqa: E402
from detprune.utils.atomic import write_text  # noqa: E402
from detprune.workflow.stages import finetune_variant, score_channels  # noqa: E402
from harness import holdout  # noqa: E402  (compare_criteria's baseline, runs and measurement)
from harness.baseline import CHECKPOINT, baseline_folder  # noqa: E402
from harness.cache import cached_result, cached_run, settings_key  # noqa: E402
from harness.cut import cut_as_run  # noqa: E402
from harness.holdout import fmt  # noqa: E402
from harness.log import timed_log  # noqa: E402
from harness.paths import SHARED  # noqa: E402

METRICS = [c for c, _ in holdout.METRICS]
VARIANTS = ("searched", "searched-from-baseline", "uniform", "saliency-global")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(SHARED / "data" / "kitti_tiny"))
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--baseline-epochs", type=int, default=30, help="of compare_criteria's cached baseline")
    p.add_argument(
        "--baseline-out", default="runs/compare_criteria", help="compare_criteria's folder (its cache and runs)"
    )
    p.add_argument("--finetune-epochs", type=int, default=5)
    p.add_argument("--target", type=float, default=0.5, help="fraction of the FLOPs kept")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--round-to", type=int, default=8)
    p.add_argument("--width-choices", type=int, default=8)
    p.add_argument("--supernet-epochs", type=int, default=10)
    p.add_argument("--subnets-per-step", type=int, default=4)
    p.add_argument("--population", type=int, default=16)
    p.add_argument("--generations", type=int, default=6)
    p.add_argument("--tau-subnets", type=int, default=8, help="subnets for the rank correlation (>= 8; 0 = skip)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="allocations to fine-tune, comma-separated")
    p.add_argument(
        "--latency-runs", type=int, default=20, help="ONNX Runtime runs per model (20 as compare_criteria's runs)"
    )
    p.add_argument("--out", default="runs/search_widths")
    args = p.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not set(args.variants) <= set(VARIANTS):
        p.error(f"--variants: choose from {', '.join(VARIANTS)}")
    args.val_count = 15  # compare_criteria's split, which its cached baseline was trained on
    return args


def criteria_args(args: argparse.Namespace) -> argparse.Namespace:
    """compare_criteria's settings for the same baseline and fine-tuning protocol."""
    return holdout.protocol_args(data=args.data, imgsz=args.imgsz, batch=args.batch, lr=args.lr,
                                 baseline_epochs=args.baseline_epochs, finetune_epochs=args.finetune_epochs,
                                 round_to=args.round_to, latency_runs=args.latency_runs, out=args.baseline_out)


def tuned_result(args, cargs, adapter, model, train, val, folder: Path, seed: int, extra: dict | None = None) -> dict:
    """Fine-tune ``model`` with compare_criteria's protocol and measure it on the val frames."""
    tick = time.perf_counter()
    tuned = finetune_variant(
        adapter, model, train, val, epochs=args.finetune_epochs, out_dir=folder, **holdout.train_options(cargs, seed)
    )
    row = holdout.measure(cargs, adapter, tuned, val)
    return {**row, **(extra or {}), "seconds": {"finetune": time.perf_counter() - tick}}


def saliency_global(args, cargs, adapter, base_model, base_key, train, val, seed: int, log) -> dict:
    """compare_criteria's saliency run at the target where its settings match; else rerun into ``<out>/global``."""
    settings = {"baseline": base_key, "target": args.target, "criterion": "saliency", "seed": seed,
                "round_to": args.round_to, "epochs": args.finetune_epochs, "latency_runs": args.latency_runs,
                **holdout.train_options(cargs, seed)}
    folder = holdout.run_dir(args.baseline_out, args.target, "saliency", seed)
    reused = cached_result(folder, settings)
    if reused is not None:
        return {**reused, "reused": str(folder / "result.json")}
    local = argparse.Namespace(**{**vars(cargs), "out": str(Path(args.out) / "global")})
    return holdout.one_run(local, adapter, base_model, base_key, train, val, args.target, "saliency", seed, log)


def build_supernet(args, adapter, base_model, base_key, train, val, log):
    """Score, build the width space, train the supernet (or read it from the cache)."""
    settings = {"baseline": base_key, "criterion": "saliency", "seed": 0, "imgsz": args.imgsz, "batch": args.batch,
                "lr": args.lr, "epochs": args.supernet_epochs, "subnets_per_step": args.subnets_per_step,
                "width_choices": args.width_choices, "round_to": args.round_to,
                "optimizer": "sgd, lr x batch/64, warm-up epoch, cosine"}  # v1 (full lr every batch) wrecked the model
    folder = Path(args.out) / "cache" / f"supernet-{settings_key(settings)}"
    model = copy.deepcopy(base_model)
    tick = time.perf_counter()
    scores = score_channels(
        adapter, model, train, "saliency", imgsz=args.imgsz, batch_size=args.batch, seed=0, progress=False
    )
    score_s = time.perf_counter() - tick
    space = WidthSpace(adapter, model, scores, imgsz=args.imgsz, width_choices=args.width_choices,
                       limits=Limits(round_to=args.round_to))
    masks, prior = ChannelMasks(space), WidthPrior(space)
    if (folder / "record.json").is_file():
        record = json.loads((folder / "record.json").read_text())
        model.load_state_dict(torch.load(folder / "supernet_state.pt", weights_only=True))
        prior.logits = [np.asarray(v) for v in record["prior_logits"]]
        log(f"supernet: cached {folder} (built in {record['training']['seconds']:.0f} s)")
        return space, masks, prior, model, record
    log(f"supernet: {len(space)} groups with {min(space.options)}-{max(space.options)} widths; "
        f"training {args.supernet_epochs} epochs, {args.subnets_per_step} subnets per step")
    training = train_supernet(adapter, model, masks, prior, train, epochs=args.supernet_epochs, imgsz=args.imgsz,
                              batch_size=args.batch, lr=args.lr, subnets_per_step=args.subnets_per_step, seed=0)
    record = {"settings": settings, "training": training.as_dict(), "score_s": score_s,
              "prior_logits": [v.tolist() for v in prior.logits]}
    folder.mkdir(parents=True, exist_ok=True)
    from detprune.utils.atomic import save_torch

    save_torch(model.state_dict(), folder / "supernet_state.pt")
    write_text(folder / "record.json", json.dumps(record) + "\n")
    log(
        f"supernet: trained in {training.seconds:.0f} s; loss per epoch "
        + ", ".join(f"{x:.2f}" for x in training.epoch_loss)
    )
    return space, masks, prior, model, record


def stats(rows: list[dict]) -> dict:
    out: dict[str, Any] = {"seeds": len(rows)}
    for column in METRICS + ["params", "flops", "latency_ms"]:
        values = [r[column] for r in rows if r.get(column) is not None]
        if values:
            out[column] = {
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            }
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cargs = criteria_args(args)
    started = time.perf_counter()
    log = timed_log(started)

    train, val = load_train_val(args.data, val_count=cargs.val_count, seed=cargs.split_seed)
    adapter = YoloAdapter()
    expected = baseline_folder(args.baseline_out, holdout.baseline_settings(cargs)) / CHECKPOINT
    if not expected.is_file():
        log(f"WARNING: {expected} not found: the baseline will be TRAINED now ({args.baseline_epochs} epochs, ~10 min)")
    base_model, base_checkpoint = holdout.baseline(cargs, adapter, train, val, log)
    base_key = holdout.baseline_key(base_checkpoint)
    base = holdout.measure(cargs, adapter, base_model, val)
    log("baseline: " + ", ".join(f"{c} {fmt(base[c])}" for c in METRICS))

    space, masks, prior, supernet, built = build_supernet(args, adapter, base_model, base_key, train, val, log)
    estimator = SupernetEstimator(adapter, supernet, masks, val, imgsz=args.imgsz, batch_size=args.batch)
    budget = FlopsBudget(space, args.target)
    evolution = evolve(
        space, prior, estimator, budget, population=args.population, generations=args.generations, seed=0
    )
    log(
        f"search: {len(evolution.history)} candidates in {evolution.seconds:.0f} s; best estimate mAP50 "
        f"{100 * evolution.fitness:.1f} at {evolution.budget_value:.1%} FLOPs; full width "
        f"{100 * estimator(space.largest()):.1f}"
    )
    widths = space.widths(evolution.best)

    common = {"baseline": base_key, "target": args.target, "epochs": args.finetune_epochs, "round_to": args.round_to,
              "latency_runs": args.latency_runs}
    runs: dict[str, list[dict]] = {}
    for seed in args.seeds:
        options = holdout.train_options(cargs, seed)
        variants = {
            "searched": lambda: cut(adapter, copy.deepcopy(supernet), space, evolution.best).model,
            "searched-from-baseline": lambda: cut(adapter, copy.deepcopy(base_model), space, evolution.best).model,
            "uniform": lambda: cut_as_run(
                adapter,
                copy.deepcopy(base_model),
                score_channels(
                    adapter,
                    base_model,
                    train,
                    "saliency",
                    imgsz=args.imgsz,
                    batch_size=args.batch,
                    seed=seed,  # noqa: B023  (called before the loop moves on)
                    progress=False,
                ),
                target_flops=args.target,
                allocation="uniform",
                round_to=args.round_to,
                imgsz=args.imgsz,
            ).model,
        }
        for name, make in variants.items():
            if name not in args.variants:
                continue
            settings = {**common, "variant": name, "seed": seed, **options,
                        **({"widths": widths, "supernet": built["settings"]} if name.startswith("searched") else {})}
            folder = Path(args.out) / "runs" / name / f"seed{seed}"
            result = cached_run(
                folder, settings, lambda: tuned_result(args, cargs, adapter, make(), train, val, folder, seed)  # noqa: B023  (called before the loop moves on)
            )
            runs.setdefault(name, []).append(result)
            log(f"{name} seed {seed}: " + ", ".join(f"{c} {fmt(result[c])}" for c in METRICS))
        if "saliency-global" not in args.variants:
            continue
        try:
            result = saliency_global(args, cargs, adapter, base_model, base_key, train, val, seed, log)
        except DetpruneError as err:
            log(f"saliency-global seed {seed}: skipped: {err}")
            continue
        runs.setdefault("saliency-global", []).append(result)
        log(f"saliency-global seed {seed}: " + ", ".join(f"{c} {fmt(result[c])}" for c in METRICS))

    # rank correlation: subnets over the FLOPs range, each cut from the baseline and fine-tuned alone
    # drawn from a uniform prior, so the subnets (and their cached fine-tunings) do not depend on the supernet
    rng, uniform = np.random.default_rng(123), WidthPrior(space)
    levels = np.linspace(max(prior.low, 0.2) + 0.02, 0.95, args.tau_subnets)
    tau_rows = []
    for k, level in enumerate(levels):
        subnet = uniform.repair(uniform.draw(rng), level - 0.02, level + 0.02, rng)
        estimate = estimator(subnet)
        folder = Path(args.out) / "tau" / f"subnet{k}"
        settings = {**common, "variant": "tau", "seed": 0, "widths": space.widths(subnet),
                    **holdout.train_options(cargs, 0)}
        result = cached_run(folder, settings, lambda: tuned_result(
            args, cargs, adapter, cut(adapter, copy.deepcopy(base_model), space, subnet).model, train, val, folder, 0))  # noqa: B023  (called before the loop moves on)
        tau_rows.append({"flops_kept": space.flops_fraction(subnet), "estimate_mAP50": 100 * estimate,
                         "finetuned_mAP50": result["mAP50"], "finetune_s": result["seconds"]["finetune"]})
        log(
            f"tau subnet {k}: FLOPs {tau_rows[-1]['flops_kept']:.1%}, estimate {100 * estimate:.1f}, fine-tuned "
            f"{result['mAP50']:.1f}"
        )
    tau = (
        kendall_tau([r["estimate_mAP50"] for r in tau_rows], [r["finetuned_mAP50"] for r in tau_rows])
        if tau_rows
        else None
    )
    tau_flops = (
        kendall_tau([r["flops_kept"] for r in tau_rows], [r["finetuned_mAP50"] for r in tau_rows]) if tau_rows else None
    )
    build_s = built["training"]["seconds"]
    separate_s = sum(r["finetune_s"] for r in tau_rows)

    rows = {name: stats(values) for name, values in runs.items()}
    table = markdown(base, rows, args, evolution, build_s, separate_s, tau, tau_flops, tau_rows, built)
    command = "python benchmarks/search_widths.py " + " ".join(sys.argv[1:] if argv is None else argv)
    report = {
        "command": command.strip(),
        "settings": vars(args),
        "baseline": {"checkpoint": base_checkpoint, **base},
        "widths": widths,
        "search": {**evolution.as_dict(), "full_width_estimate": estimator(space.largest())},
        "supernet": built["training"],
        "prior_probabilities": [p.round(4).tolist() for p in prior.probabilities()],
        "rows": rows,
        "runs": runs,
        "tau": {
            "kendall_tau": tau,
            "flops_only_tau": tau_flops,
            "subnets": tau_rows,
            "supernet_build_s": build_s,
            "separate_training_s": separate_s,
        },
        "seconds": time.perf_counter() - started,
    }
    out = Path(args.out)
    write_text(out / "results.json", json.dumps(report, indent=2) + "\n")
    write_text(out / "results.md", f"# Supernet width search\n\n`{report['command']}`\n\n{table}\n")
    print()
    print(table)
    log(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    return 0


def markdown(base, rows, args, evolution, build_s, separate_s, tau, tau_flops, tau_rows, built) -> str:
    head = ["allocation", "seeds", *METRICS, "Δ mAP50", "params (M)", "GFLOPs", "CPU ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines.append("| unpruned | - | " + " | ".join(fmt(base[c]) for c in METRICS)
                 + f" | - | {base['params'] / 1e6:.2f} | {base['flops'] / 1e9:.2f} | {fmt(base['latency_ms'])} |")
    for name, s in rows.items():
        lines.append(f"| {name} | {s['seeds']} | " + " | ".join(fmt(s.get(c)) for c in METRICS)
                     + f" | {s['mAP50']['mean'] - base['mAP50']:+.1f} | {s['params']['mean'] / 1e6:.2f}"
                     + f" | {s['flops']['mean'] / 1e9:.2f} | {fmt(s.get('latency_ms'))} |")
    lines.append(f"\nAP in points on {args.val_count} held-out frames, mean ± std over seeds "
                 f"{','.join(map(str, args.seeds))}; {args.imgsz} px; target {args.target:g} of the FLOPs; "
                 f"fine-tuning {args.finetune_epochs} epochs; CPU ms = ONNX Runtime median at batch 1.")
    lines.append(
        f"\nSupernet: {args.supernet_epochs} epochs, {args.subnets_per_step} subnets per step, "
        f"{args.width_choices} widths per group, built in {build_s:.0f} s. Search: population {args.population}, "
        f"{args.generations} generations, {len(evolution.history)} candidates, {evolution.seconds:.0f} s; chosen "
        f"estimate {100 * evolution.fitness:.1f} mAP50 at {evolution.budget_value:.1%} FLOPs."
    )
    if not tau_rows:
        return "\n".join(lines) + "\n"
    lines.append(f"\nRank correlation over {len(tau_rows)} subnets (each cut from the baseline, fine-tuned "
                 f"{args.finetune_epochs} epochs alone): Kendall tau(supernet estimate, fine-tuned mAP50) = {tau:.2f}; "
                 f"tau(FLOPs alone, fine-tuned mAP50) = {tau_flops:.2f}. Supernet build {build_s:.0f} s vs "
                 f"{separate_s:.0f} s to fine-tune those {len(tau_rows)} subnets separately.\n")
    lines.append("| subnet FLOPs kept | supernet estimate mAP50 | fine-tuned mAP50 |\n|---|---|---|")
    lines += [f"| {r['flops_kept']:.1%} | {r['estimate_mAP50']:.1f} | {r['finetuned_mAP50']:.1f} |" for r in tau_rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DetpruneError as err:
        print(f"search_widths: error: {err}", file=sys.stderr)
        sys.exit(2)
