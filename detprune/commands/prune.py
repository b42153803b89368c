"""``detprune prune``: the flags, the library's prune run, the summary.

The run itself (load, evaluate, score, cut, fine-tune, evaluate, write) is
:func:`detprune.workflow.run.run` over a :class:`~detprune.workflow.config.PruneConfig`, the
same run ``detprune.run`` and the benchmarks make; its files are listed there.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from detprune.commands.prune_options import add_arguments  # noqa: F401  (the CLI reads it here)

HELP = "prune a detector's channels to a FLOPs, parameter or channel target and write the smaller model"


def run(args: argparse.Namespace) -> int:
    from detprune.workflow.config import PruneConfig, pick_target
    from detprune.workflow.run import run as prune_run

    pick_target(args)
    state = prune_run(PruneConfig.from_namespace(args))
    _print_summary(state, state.out)
    return 0


def _print_summary(state, out: Path) -> None:
    from detprune.pruning.flops import format_count
    from detprune.workflow.config import allocation_record, imgsz_text
    from detprune.workflow.run import MARKER

    result, config = state.result, state.config
    before, after = result.channels_before, result.channels_after
    width = max(len(n) for n in before)
    print(f"{'layer':<{width}}  {'before':>6}  {'after':>6}  {'kept':>5}")
    for name, b in before.items():
        a = after.get(name, 0)
        print(f"{name:<{width}}  {b:>6}  {a:>6}  {a / b if b else 1:>5.0%}")
    rb, ra = result.before, result.after
    print(f"params  {format_count(rb.params):>8} -> {format_count(ra.params):>8}  ({ra.params / rb.params:.1%} kept)")
    print(
        f"FLOPs   {format_count(rb.flops):>8} -> {format_count(ra.flops):>8}  ({ra.macs / rb.macs:.1%} kept, "
        f"at {imgsz_text(config.imgsz)} input)"
    )
    target = result.target
    print(
        f"target: {target.describe()}; reached {target.describe(result.achieved[target.kind])}; "
        f"{result.num_prunable_groups}/{result.num_groups} groups prunable; "
        f"surgery {result.seconds.get('surgery', 0):.2f} s"
    )
    chosen = allocation_record(config, result)
    print(
        f"criterion: {config.criterion_name or 'scores from ' + str(config.scores)}; allocation: {chosen['allocation']}"
        + (f" on {chosen['cost']}" if chosen["cost"] else "")
        + (f", widths from {chosen['widths_from']}" if chosen["widths_from"] else "")
    )
    if state.latency is not None:
        search = state.latency
        predicted = (
            f", predicted x{search.predicted_ratio:.3f} by the latency table"
            if search.predicted_ratio is not None
            else ""
        )
        print(
            f"latency: x{search.measured_ratio:.3f} of the original on {search.backend}{predicted} "
            f"(target x{search.target:g} "
            f"± {search.tolerance:.0%}, {len(search.candidates)} candidate(s) measured, round to {search.round_to})"
        )
    if state.schedule is not None:
        from detprune.workflow.schedule import summary_line

        print(summary_line(state))
    if state.evaluation is not None:
        print()
        print(state.evaluation.to_table())
    extra = ", report.json/.md and plots" if state.evaluation is not None else ""
    print(f"wrote {out / MARKER}, prune.json, channels.csv/.json/.png, scores.pt, config.yaml{extra} in {out}")
