"""The tables and pictures of benchmarks/kitti_accuracy.py, read from its cached rows.

Every difference is paired: the same bootstrap resamples of val frames score both models, and
an ordering is claimed only where the 95% interval excludes 0. Choices (the best rows, the
distillation weight) were made on the tuning split; val is read here only.
"""

from __future__ import annotations

import json
from pathlib import Path

from detprune.data.detections_io import load_detections
from detprune.evaluation.benchmark_plots import plot_accuracy_vs_flops, plot_forest
from detprune.evaluation.bootstrap import paired_bootstrap
from detprune.utils.atomic import write_text
from harness.curves import plot_curves

COLUMNS = ("mAP50", "mAP50-95", "AP_small", "AP Car", "AP Pedestrian", "AP Cyclist")
FOREST = ("mAP50", "AP Pedestrian", "AP Cyclist", "AP_small")


def _row_label(result: dict) -> str:
    if result["kind"] == "unpruned":
        return "unpruned (baseline)"
    if result["kind"] == "same_budget":
        return "baseline, same budget"
    return f"{result['row']} @ {result['settings']['target']:g}"


def _predictions(bench, result: dict, split: str = "val"):
    folder = {"unpruned": "unpruned", "same_budget": "same_budget"}.get(result["kind"])
    if folder is None:
        from kitti_rows import Row

        folder = Row(result["settings"]["target"], result["settings"]["criterion"], result["settings"]["allocation"],
                     result["settings"]["distill"]).name()
    dataset = {"val": bench.split.val, "tune": bench.split.tune}.get(split) or bench.extra_sets[split]
    return load_detections(bench.out / "rows" / folder / f"predictions-{split}.npz", dataset)


def _interval(entry: dict) -> str:
    """``diff [low, high]`` in points, ``*`` where the interval excludes 0."""
    diff, ci = entry.get("diff"), entry.get("diff_ci") or [None, None]
    if diff is None or None in ci:
        return "-"
    mark = "*" if ci[0] > 0 or ci[1] < 0 else ""
    return f"{100 * diff:+.1f} [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]{mark}"


def _pt(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def compare(bench, a: dict, b: dict, resamples: int) -> dict:
    """Paired bootstrap of ``b`` against ``a`` on val."""
    metrics = ["mAP50", "mAP50-95", "AP_small", *(f"AP {c}" for c in bench.dataset.class_names)]
    return paired_bootstrap(bench.split.val, _predictions(bench, a), _predictions(bench, b), metrics=metrics,
                            resamples=resamples, seed=bench.args.seed)


def write_report(bench, report: dict, log) -> None:
    rows = report["rows"]
    by_kind = {r["kind"]: r for r in rows if r["kind"] != "pruned"}
    reference = by_kind.get("same_budget")
    if reference is None:
        log("no same-budget row yet: no report")
        return
    resamples = bench.args.bootstrap
    log(f"paired bootstrap ({resamples} resamples of {len(bench.split.val)} val frames) for {len(rows)} rows")
    versus = {_row_label(r): compare(bench, reference, r, resamples) for r in rows if r is not reference}
    report["bootstrap_vs_same_budget"] = versus
    pruned = sorted((r for r in rows if r["kind"] == "pruned"), key=lambda r: -r["tune"]["mAP50"])
    at_target = [r for r in pruned if r["settings"]["target"] == bench.args.target]  # a pair compares one cut
    pairs = {}
    if len(at_target) >= 2:
        pairs[f"best two on the tuning split @ {bench.args.target:g}"] = (at_target[0], at_target[1])
    named = {_row_label(r): r for r in rows}
    target = bench.args.target
    for title, (a, b) in {"saliency against taylor (cost)": ("taylor/cost", "saliency/cost"),
                          "saliency(loss) against saliency(confidence) (cost)":
                              ("saliency/cost", "saliency:utility=loss/cost"),
                          "cost allocation against global (saliency)": ("saliency/global", "saliency/cost")}.items():
        ra, rb = named.get(f"{a} @ {target:g}"), named.get(f"{b} @ {target:g}")
        if ra and rb:
            pairs[title] = (ra, rb)
    for r in pruned:  # every distilled row against the same cut fine-tuned without a teacher
        token, cut = r["row"], f"{r['settings']['target']:g}"
        plain = named.get(f"{token.split('/distill=')[0]} @ {cut}") if "/distill=" in token else None
        if plain:
            pairs[f"distillation ({token.split('/distill=')[1]}) against none, {token.split('/distill=')[0]}"
                  f" @ {cut}"] = (plain, r)
    report["bootstrap_pairs"] = {title: {"a": _row_label(a), "b": _row_label(b), **compare(bench, a, b, resamples)}
                                 for title, (a, b) in pairs.items()}
    write_text(bench.out / "results.json", json.dumps(report, indent=2, default=str) + "\n")
    write_text(bench.out / "results.md", markdown(bench, report))
    plot_forest({k: v for k, v in versus.items() if not k.startswith("unpruned")}, bench.out / "forest.png",
                metrics=FOREST, goal=-1.0, title="Paired difference to the same-budget baseline (val, 95% CI)")
    series: dict[str, list] = {}
    for r in rows:
        if r["kind"] == "pruned":
            key = r["row"]
            series.setdefault(key, []).append((r["flops_kept"], r["val"]["mAP50"] / 100))
    plot_accuracy_vs_flops({k: sorted(v) for k, v in series.items()}, bench.out / "accuracy_vs_flops.png",
                           baselines={"same budget": (1.0, reference["val"]["mAP50"] / 100)})
    plot_curves({"baseline (tuning split)": report["baseline"]["curve"]}, bench.out / "baseline_curve.png")
    log(f"wrote {bench.out / 'results.md'}, forest.png, accuracy_vs_flops.png, baseline_curve.png")


def markdown(bench, report: dict) -> str:
    a = bench.args
    deviation = getattr(bench.dataset, "deviation", None)
    lines = [f"# Accuracy at the cut on {len(bench.dataset)} KITTI frames", "", f"`{report['command']}`", "",
             f"Split (seed {a.split_seed}): fit {report['split']['fit']}, tune {report['split']['tune']}, "
             f"val {report['split']['val']} frames. Baseline {a.baseline_epochs} epochs; every row fine-tunes "
             f"{a.finetune_epochs} epochs and reports its last. Evaluated on val with rect batches {a.width} wide "
             "(ultralytics' val). Differences: paired bootstrap over val frames, "
             f"{a.bootstrap} resamples, 95% interval; `*` where it excludes 0. Per-class AP is COCO's AP over "
             "IoU .50:.95; CPU latency x: ONNX Runtime median at batch 1 on the 224x640 canvas, interleaved with "
             "the baseline.", ""]
    if deviation:
        lines += [f"KITTI figures: devkit AP_R40; {deviation}.", ""]
    # per-class AP is COCO's AP over IoU .50:.95 (their mean is mAP50-95); KITTI: devkit AP_R40, mean of classes
    head = ["row", "FLOPs kept", "params kept", "mAP50", "mAP50-95", "AP_small", "Car AP", "Ped AP", "Cyc AP",
            "KITTI mod", "KITTI hard", "CPU latency x", "Δ mAP50 [95%]", "Δ Ped AP", "Δ Cyc AP", "Δ AP_small",
            "tune mAP50"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    versus = report.get("bootstrap_vs_same_budget", {})
    for r in report["rows"]:
        v = r["val"]
        label = _row_label(r)
        d = versus.get(label, {}).get("metrics", {})
        lat = (r.get("latency") or {}).get("ratio")
        cells = [label, f"{r['flops_kept']:.1%}", f"{r['params_kept']:.1%}", *(_pt(v.get(c)) for c in COLUMNS),
                 _pt(v.get("KITTI moderate")), _pt(v.get("KITTI hard")), "-" if lat is None else f"{lat:.2f}",
                 *(_interval(d.get(m, {})) if d else "-" for m in ("mAP50", "AP Pedestrian", "AP Cyclist", "AP_small")),
                 _pt(r["tune"]["mAP50"])]
        lines.append("| " + " | ".join(cells) + " |")
    if report.get("bootstrap_pairs"):
        lines += [
            "",
            "Pairs (b − a on val, paired bootstrap):",
            "",
            "| pair | a | b | Δ mAP50 | Δ Ped | Δ Cyc | Δ AP_small |",
            "|---|---|---|---|---|---|---|",
        ]
        for title, p in report["bootstrap_pairs"].items():
            m = p["metrics"]
            lines.append(
                f"| {title} | {p['a']} | {p['b']} | "
                + " | ".join(_interval(m.get(k, {})) for k in ("mAP50", "AP Pedestrian", "AP Cyclist", "AP_small"))
                + " |"
            )
    lines += ["", "![forest](forest.png)", "", "![accuracy vs FLOPs](accuracy_vs_flops.png)", "",
              "![baseline curve](baseline_curve.png)", ""]
    return "\n".join(lines)


def main() -> None:  # re-report from the cache without training: python benchmarks/kitti_report.py [ARGS]
    import sys
    import time

    from kitti_accuracy import Bench, parse_args
    from harness.log import timed_log

    args = parse_args(sys.argv[1:])
    bench = Bench(args, timed_log(time.perf_counter(), clock=True))
    report = json.loads(Path(args.out, "results.json").read_text())
    write_report(bench, report, bench.log)


if __name__ == "__main__":
    main()
