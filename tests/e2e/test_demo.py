"""The demo: a fair table (every row trained as long, deltas against the same-budget baseline),
a report that embeds every figure it wrote, and the rule that decides when the baseline is trained."""

from __future__ import annotations

import contextlib
import io
import json
import re
from types import SimpleNamespace

import pytest

from detprune.cli import main
from detprune.evaluation.report import Report
from detprune.workflow.baseline import VAL_KEY, Flatness
from detprune.workflow.demo import SAME_BUDGET

from pruning_toys import one_thread  # noqa: F401


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A tiny demo run: 4 scenes (2 held out), 1 baseline epoch, 1 fine-tuning epoch, 64 px."""
    out = tmp_path_factory.mktemp("demo") / "run"
    printed = io.StringIO()  # capsys is per test; the run is shared by the module
    with contextlib.redirect_stdout(printed):
        code = main(["demo", "--out", str(out), "--num-images", "4", "--val-images", "2", "--width", "320",
                     "--height", "96", "--imgsz", "64", "--batch", "2", "--baseline-epochs", "1",
                     "--finetune-epochs", "1", "--latency-runs", "2", "--criteria", "taylor/cost,l1"])
    assert code == 0
    return out, printed.getvalue()


def test_every_row_has_the_same_training_and_deltas_are_against_the_same_budget_baseline(demo):
    out, _ = demo
    data = json.loads((out / "report.json").read_text())
    # a criterion that names its allocation gets a row of its own name; the others use --allocation
    assert [v["name"] for v in data["variants"]] == ["baseline", SAME_BUDGET, "taylor (cost)", "l1"]
    assert data["baseline"] == SAME_BUDGET
    epochs = {v["name"]: v["info"]["epochs"] for v in data["variants"]}
    assert epochs == {"baseline": "1", SAME_BUDGET: "1 + 1", "taylor (cost)": "1 + 1", "l1": "1 + 1"}
    report = Report.load(out)
    rows = {row[0]: row for row in report.summary_rows()}
    header = ["Metric", *report._columns()]
    assert header == ["Metric", "baseline", SAME_BUDGET, "taylor (cost)", "l1", "Δ baseline", "Δ taylor (cost)", "Δ l1"]
    reference = report.variants[SAME_BUDGET]
    for name in ("baseline", "taylor (cost)", "l1"):
        summary = report.variants[name]
        delta = rows["Latency median (ms)"][header.index(f"Δ {name}")]
        expected = (summary.latency.median_ms - reference.latency.median_ms) / reference.latency.median_ms
        assert delta == f"{expected:+.1%}"
        delta = rows["mAP50-95"][header.index(f"Δ {name}")]
        assert delta == f"{summary.metrics['mAP'] - reference.metrics['mAP']:+.3f}"
    flops = {v["name"]: v["flops"] for v in data["variants"]}
    for name, folder in (("taylor (cost)", "taylor-cost"), ("l1", "l1")):
        assert abs(flops[name] / flops[SAME_BUDGET] - 0.5) < 0.02
        assert (out / folder / "pruned.pt").is_file()
    assert (out / "same_budget" / "baseline.pt").is_file()
    # all four timed together, round by round, each graph kept beside its model
    assert all("interleaved" in v["latency"]["backend"] for v in data["variants"])
    for path in ("baseline/baseline.onnx", "same_budget/baseline.onnx", "taylor-cost/pruned.onnx", "l1/pruned.onnx"):
        assert (out / path).is_file(), path


def test_the_report_names_how_it_was_made(demo):
    out, printed = demo
    run = json.loads((out / "report.json").read_text())["run"]
    assert run["pruning"] == {"allocation": {"taylor (cost)": "cost", "l1": "global"}, "distillation": "off",
                              "target_flops": 0.5}
    training = run["baseline_training"]
    assert training["epochs"] == 1 == len(training["val_mAP50-95"]) and training["max_epochs"] == 1
    assert training["flattened"] is False and "last 5 epochs" in training["rule"]
    assert set(run["seconds"]) == {"synthesise", "baseline", "same_budget", "taylor-cost", "l1", "latency"}
    assert all(value == round(value, 1) for value in run["seconds"].values())
    assert set(run["load_average"]) == {"start", "end", "cpus"}
    markdown = (out / "report.md").read_text()
    assert "| Allocation | – | – | cost | global |" in markdown
    assert "| Distillation | – | – | off | off |" in markdown
    # the one line that says what the table shows and what one run on so few images cannot
    lines = [line for line in printed.splitlines() if "cannot" in line]
    assert len(lines) == 1 and SAME_BUDGET in lines[0] and "noise" in lines[0] and "2 images" in lines[0]
    assert lines[0] in markdown
    (times,) = [line for line in printed.splitlines() if line.startswith("stage times:")]
    assert "load average" in times and re.search(r"baseline \d+\.\d s", times)
    assert "allocation cost for taylor (cost), global for l1; distillation off" in printed


def test_report_embeds_every_figure_the_run_wrote(demo):
    out, _ = demo
    markdown = (out / "report.md").read_text()
    embedded = re.findall(r"!\[[^\]]+\]\(([^)]+)\)", markdown)
    written = sorted(p.name for p in out.glob("*.png"))
    assert sorted(embedded) == written
    assert {"metrics_vs_cost.png", "channels_kept.png", "baseline_curve.png"} <= set(written)


def _trainer(value):
    return SimpleNamespace(metrics={VAL_KEY: value}, stop=False)


def test_flatness_rule():
    rule = Flatness(window=2, min_gain=0.1)
    rule.curve = [0.1, 0.2, 0.3]
    assert not rule.is_flat()  # fewer than 2 x 2 epochs
    rule.curve = [0.1, 0.2, 0.3, 0.31]
    assert not rule.is_flat()  # best of the last two 0.31 vs 0.2 before: +55%, still rising
    rule.curve = [0.1, 0.3, 0.31, 0.32]
    assert rule.is_flat()  # 0.32 vs 0.3: +6.7% < 10%
    rule.curve = [0.0, 0.0, 0.0, 0.0]
    assert not rule.is_flat()  # nothing learned yet is not a plateau


def test_flatness_stops_the_trainer_and_ignores_the_final_validation():
    rule = Flatness(window=2, min_gain=0.1)
    trainers = [_trainer(v) for v in (0.1, 0.3, 0.31, 0.32)]
    for trainer in trainers:
        rule.on_fit_epoch_end(trainer)
    assert [t.stop for t in trainers] == [False, False, False, True]
    rule.on_fit_epoch_end(_trainer(0.5))  # ultralytics' validation of best.pt after the loop
    assert rule.curve == [0.1, 0.3, 0.31, 0.32] and rule.flattened
    assert rule.record(40)["epochs"] == 4 and rule.record(40)["max_epochs"] == 40
    capped = Flatness(window=2, min_gain=0.1)
    last = SimpleNamespace(metrics={VAL_KEY: 0.2}, stop=True)  # the cap: ultralytics stops itself
    capped.on_fit_epoch_end(last)
    capped.on_fit_epoch_end(_trainer(0.9))
    assert capped.curve == [0.2] and not capped.flattened


@pytest.mark.parametrize("flags, message", [
    (["--allocation", "evenly"], "--allocation must be one of global, uniform, cost"),
    (["--flat-window", "0"], "--flat-window must be >= 1"),
])
def test_bad_demo_settings_are_one_line(flags, message, tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "demo").exists()
