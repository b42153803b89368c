"""The benchmarks' shared harness: cache keys stay byte-identical to the ones earlier runs wrote, a cached
result is reused only for equal settings, and no benchmark script imports another."""

import ast
import copy
import dataclasses
import json
import re
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from harness import cache  # noqa: E402
from harness.cache import cached_result, cached_run, settings_key, store_result  # noqa: E402
from harness.log import past_stop, timed_log  # noqa: E402

# Keys computed with the benchmark code before the harness existed (compare_criteria.settings_key and
# the settings dicts each script built); a changed literal means every cached baseline, cell and row
# of a past run would be trained again.
PLAIN_KEY = "535bac2ca86f"
FOLD_KEYS = {
    "baseline": "baseline-3422061469d4",
    "saliency-global-plain-seed0": "c1a2d95d1add",
    "catro-widths-of-saliency-global-plain-seed0": "f2fb6b83b85a",
    "car-cost-distill-seed1-rerun-cw-Pedestrian=3": "3e57b8542304",
    "taylor-latency-plain-seed0": "e16cd96c70f0",
    "unpruned": "0484b829c3f3",
}
KITTI_KEYS = {"baseline": "baseline-ac08bed94158", "row": "9d4fba3bedaf", "unpruned": "d3a7d6515deb"}
HOLDOUT_KEYS = {"baseline": "baseline-8cb9f3da1009", "run": "8996fda2c7e0"}


@pytest.fixture
def pinned_versions(monkeypatch):
    """The library versions and latency-table version that enter baseline and cell keys, held fixed."""
    import torch
    import ultralytics

    import detprune.pruning.latency_table as table

    monkeypatch.setattr(ultralytics, "__version__", "8.3.0")
    monkeypatch.setattr(torch, "__version__", "2.5.1")
    monkeypatch.setattr(table, "TABLE_VERSION", 2)


def test_settings_key_is_the_one_earlier_runs_wrote():
    settings = {"b": [1, 2.5, "x"], "a": {"z": None, "y": True}, "c": 0.5}
    assert settings_key(settings) == PLAIN_KEY
    assert settings_key(dict(reversed(list(settings.items())))) == PLAIN_KEY  # key order does not matter
    assert re.fullmatch(r"[0-9a-f]{12}", settings_key({}))


def test_kfold_baseline_and_cell_keys_are_unchanged(pinned_versions):
    from accuracy_cells import Cell, Runner

    args = SimpleNamespace(model="yolov5n.yaml", weights="/nonexistent/backbone.pt", data="/nonexistent/kitti",
                           folds=3, fold_seed=0, baseline_epochs=80, threads=2, width=640, batch=8, lr=0.01, seed=0,
                           out="/tmp/o", finetune_epochs=20, latency_runs=30, round_to=8, car_images=8)
    runner = Runner(args, None, None, None, (224, 640), settings_key, print)
    assert runner.baseline_dir(1).name == FOLD_KEYS["baseline"]
    for cell in [Cell(0.5, "saliency", "global", False, 0), Cell(0.5, "catro", "widths:saliency-global", False, 0),
                 Cell(0.5, "car", "cost", True, 1, "rerun", "Pedestrian=3"), Cell(0.62, "taylor", "latency", False, 0)]:
        assert settings_key(runner.cell_settings(cell, 1)) == FOLD_KEYS[cell.name()], cell.name()
    assert settings_key({**runner._settings(2), "epochs": 0}) == FOLD_KEYS["unpruned"]


def test_kitti_baseline_and_row_keys_are_unchanged(pinned_versions):
    from kitti_accuracy import Bench
    from kitti_rows import Row, RowRunner

    args = SimpleNamespace(model="yolov5n.yaml", weights="/nonexistent/backbone.pt", data="/nonexistent/kitti_2k",
                           val=1000, tune=200, split_seed=0, baseline_epochs=40, threads=2, width=640, batch=8,
                           lr=0.01, seed=0, finetune_epochs=10, latency_runs=30, round_to=8, score_images=256)
    bench = object.__new__(Bench)  # the settings only: no data is read
    bench.args, bench.out, bench.extra_sets = args, Path("/tmp/k"), {"extra1": None}
    assert bench.baseline_dir().name == KITTI_KEYS["baseline"]
    rows = object.__new__(RowRunner)
    rows.bench, rows.args = bench, args
    row = Row.parse("saliency:utility=loss/cost/distill=2", 0.5)
    assert settings_key(rows._settings(**dataclasses.asdict(row), **bench.train_options(0))) == KITTI_KEYS["row"]
    assert settings_key(rows._settings(epochs=0)) == KITTI_KEYS["unpruned"]


def test_holdout_baseline_and_run_keys_are_unchanged():
    from compare_criteria import parse_args

    from harness import holdout

    args = parse_args(["--data", "/nonexistent/kitti_tiny", "--weights", "/nonexistent/backbone.pt", "--imgsz", "320",
                       "--baseline-epochs", "30", "--out", "/tmp/cc"])
    assert "baseline-" + settings_key(holdout.baseline_settings(args)) == HOLDOUT_KEYS["baseline"]
    assert settings_key(holdout.run_settings(args, "abc123", 0.5, "l1", 2)) == HOLDOUT_KEYS["run"]
    # another script's namespace built from compare_criteria's defaults keys the same baseline
    given = {k: getattr(args, k) for k in ("data", "weights", "imgsz", "batch", "lr", "baseline_epochs", "out")}
    assert holdout.baseline_settings(holdout.protocol_args(**given)) == holdout.baseline_settings(args)


def test_a_stored_result_is_reused_only_for_equal_settings(tmp_path):
    folder = tmp_path / "row"
    settings = {"target": 0.5, "criterion": "l1"}
    assert cached_result(folder, settings) is None  # nothing stored yet
    store_result(folder, {"settings": settings, "mAP50": 41.0})
    assert cached_result(folder, settings) == {"settings": settings, "mAP50": 41.0}
    assert cached_result(folder, dict(reversed(list(settings.items()))))["mAP50"] == 41.0
    assert cached_result(folder, settings, mark=True)["cached"] is True
    assert cached_result(folder, {**settings, "target": 0.3}) is None
    assert cached_result(folder, {"target": 0.5}) is None
    assert (folder / "result.json").read_text() == json.dumps({"settings": settings, "mAP50": 41.0}, indent=2) + "\n"


def test_cached_run_works_once_per_settings(tmp_path):
    calls = []

    def work() -> dict:
        calls.append(1)
        return {"mAP50": float(len(calls))}

    first = cached_run(tmp_path, {"seed": 0}, work)
    assert first == {"settings": {"seed": 0}, "mAP50": 1.0}
    assert cached_run(tmp_path, {"seed": 0}, work) == first and len(calls) == 1
    assert cached_run(tmp_path, {"seed": 1}, work)["mAP50"] == 2.0  # other settings: computed and stored anew
    assert cached_result(tmp_path, {"seed": 0}) is None


def test_results_are_written_atomically(tmp_path, monkeypatch):
    """Through detprune.utils.atomic.write_text: an interrupted write never leaves half a result.json."""
    import detprune.utils.atomic as atomic

    written = []

    def recording(path, text, *args, **kwargs):
        written.append(Path(path))
        return atomic.write_text(path, text, *args, **kwargs)

    assert cache.write_text is atomic.write_text
    monkeypatch.setattr(cache, "write_text", recording)
    store_result(tmp_path / "cell", {"settings": {}})
    assert written == [tmp_path / "cell" / "result.json"]
    assert [p.name for p in (tmp_path / "cell").iterdir()] == ["result.json"]  # no temporary file left


def test_timed_log_formats(capsys):
    timed_log(time.perf_counter() - 12)("plain")
    timed_log(time.perf_counter() - 12, clock=True)("clocked")
    plain, clocked = capsys.readouterr().out.splitlines()
    assert plain == "[    12 s] plain"
    assert re.fullmatch(r"\[\d\d:\d\d:\d\d \+   12 s\] clocked", clocked)


def test_past_stop():
    assert not past_stop(None) and not past_stop("")
    assert past_stop("00:00")  # every time of day is at or past midnight



def test_a_baseline_is_trained_once_and_stored_in_one_layout(tmp_path):
    from pruning_toys import ResidualConcatNet, ToyAdapter

    from harness.baseline import baseline_folder, cached_baseline

    adapter, settings, trained = ToyAdapter(), {"epochs": 3, "seed": 0}, []

    def train():
        trained.append(1)
        return ResidualConcatNet().eval(), {"curve": [{"epoch": 1, "mAP50": 0.1}], "seconds_before": 40.0}

    folder = baseline_folder(tmp_path, settings)
    assert folder == tmp_path / "cache" / f"baseline-{settings_key(settings)}"
    model, info = cached_baseline(adapter, folder, settings, train, lambda _: None)
    assert sorted(p.name for p in folder.iterdir()) == ["baseline.pt", "info.json", "settings.json"]
    assert info["settings"] == settings and info["curve"] == [{"epoch": 1, "mAP50": 0.1}]
    assert info["seconds"] >= 40.0  # the interrupted run's time is counted with this one's
    assert json.loads((folder / "settings.json").read_text()) == settings
    again, info_again = cached_baseline(adapter, folder, settings, train, lambda _: None)
    assert len(trained) == 1 and info_again == info
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    (folder / "info.json").unlink()  # folders cached before info.json existed still load
    assert cached_baseline(adapter, folder, settings, train, lambda _: None)[1] == {"settings": settings}
    assert len(trained) == 1


def test_an_interrupted_baseline_is_not_taken_for_a_finished_one(tmp_path):
    from pruning_toys import ResidualConcatNet, ToyAdapter

    from harness.baseline import cached_baseline

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cached_baseline(ToyAdapter(), tmp_path / "b", {"seed": 0}, interrupted, lambda _: None)
    assert not (tmp_path / "b" / "baseline.pt").exists()  # the next call trains (or resumes), not loads
    model, info = cached_baseline(ToyAdapter(), tmp_path / "b", {"seed": 0},
                                  lambda: (ResidualConcatNet(), {}), lambda _: None)
    assert info["curve"] is None and (tmp_path / "b" / "baseline.pt").is_file()


@pytest.mark.parametrize("allocation", ["global", "uniform", "cost"])
def test_the_benchmarks_cut_is_the_prune_runs(allocation):
    """harness.cut_as_run keeps exactly the channels prune_model keeps for the same settings (the
    PruneConfig defaults are the pruner's), and refuses what the run refuses, in one line."""
    from pruning_toys import ResidualConcatNet, ToyAdapter, random_scores

    from detprune.errors import BadInputError
    from detprune.pruning import prune_model
    from harness.cut import cut_as_run

    adapter, base = ToyAdapter(), ResidualConcatNet().eval()
    scores = random_scores(base, seed=3)
    direct = prune_model(adapter, copy.deepcopy(base), scores, target_flops=0.5, allocation=allocation, round_to=1,
                         imgsz=32)
    through_run = cut_as_run(adapter, copy.deepcopy(base), scores, target_flops=0.5, allocation=allocation,
                             round_to=1, imgsz=32)
    assert through_run.channels_after == direct.channels_after
    assert through_run.channels_after != direct.channels_before  # something was cut
    for a, b in zip(direct.model.state_dict().values(), through_run.model.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(BadInputError, match="--allocation must be one of"):
        cut_as_run(adapter, copy.deepcopy(base), scores, target_flops=0.5, allocation="greedy", imgsz=32)
    with pytest.raises(BadInputError, match="give one target"):
        cut_as_run(adapter, copy.deepcopy(base), scores, imgsz=32)


# a benchmark's own row/cell/report modules, each imported by the one script it belongs to
OWN_MODULES = {
    "accuracy": {"accuracy_cells", "accuracy_report"},
    "kitti_accuracy": {"kitti_rows", "kitti_report"},
    "kitti_report": {"kitti_rows", "kitti_accuracy"},  # kitti_accuracy's report re-reads its cache
}


def _imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_no_benchmark_script_imports_another():
    modules = {p.stem for p in BENCHMARKS.glob("*.py")}
    for path in sorted(BENCHMARKS.glob("*.py")):
        others = (_imported(path) & modules) - OWN_MODULES.get(path.stem, set()) - {path.stem}
        assert not others, f"{path.name} imports {sorted(others)}: share it through benchmarks/harness"
    for path in sorted((BENCHMARKS / "harness").glob("*.py")):
        assert not _imported(path) & modules, f"harness/{path.name} imports a benchmark script"
