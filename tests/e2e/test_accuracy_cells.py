"""The accuracy benchmark's cells: new settings (widths of another criterion, class weights) name
their cells and enter the cache key only when used, so the cells cached before them keep theirs."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from accuracy_cells import Cell  # noqa: E402
from accuracy_report import row_name, summarise  # noqa: E402
from harness.criteria import allocation_label, split_allocation  # noqa: E402

from detprune.criteria.class_weights import parse_class_weights  # noqa: E402
from detprune.errors import DetpruneError  # noqa: E402

CLASSES = ["Car", "Pedestrian", "Cyclist"]


def test_plain_cell_keeps_the_key_and_folder_it_had():
    cell = Cell(0.5, "saliency", "global", False, 0)
    # the key and folder of the cells cached before class weights and widths:... existed
    assert cell.describe() == {"target": 0.5, "criterion": "saliency", "allocation": "global", "distill": False,
                               "seed": 0, "replica": ""}
    assert cell.name() == "saliency-global-plain-seed0"


def test_new_settings_change_key_and_folder():
    plain = Cell(0.5, "saliency", "global", False, 0)
    weighted = Cell(0.5, "saliency", "global", False, 0, class_weights="Pedestrian=3,Cyclist=3")
    widths = Cell(0.5, "catro", "widths:saliency-global", False, 0)
    assert weighted.describe()["class_weights"] == "Pedestrian=3,Cyclist=3"
    assert len({plain.name(), weighted.name(), widths.name()}) == 3
    assert all("/" not in c.name() and ":" not in c.name() for c in (weighted, widths))


def test_allocation_tokens():
    assert split_allocation("cost") == ("cost", None)
    assert split_allocation("widths:saliency-global") == ("global", "saliency")
    assert split_allocation("widths:taylor-cost") == ("cost", "taylor")
    assert split_allocation("widths:saliency") == ("global", "saliency")
    assert allocation_label("widths:saliency-global") == "widths of saliency-global"
    assert allocation_label("uniform") == "uniform"


def test_class_weights_parse_and_errors():
    assert parse_class_weights("Pedestrian=3, Cyclist=2.5", CLASSES) == {"Pedestrian": 3.0, "Cyclist": 2.5}
    assert parse_class_weights(None) == {}
    for bad, says in [("Pedestrian", "CLASS=WEIGHT"), ("Pedestrian=x", "CLASS=WEIGHT"),
                      ("Pedestrian=0", "positive"), ("Cyclist=-1", "positive"), ("Dog=2", "known: Car, Pedestrian")]:
        with pytest.raises(DetpruneError, match=says):
            parse_class_weights(bad, CLASSES)


def _result(cell: Cell, fold: int, map50: float) -> dict:
    metrics = {"mAP50": map50}
    return {"kind": "pruned", "fold": fold, "settings": cell.describe(), "metrics": metrics, "params": 1.0,
            "flops": 1.0, "flops_kept": 0.5, "seconds": {"total": 1.0}}


def test_report_rows_keep_weighted_and_plain_apart():
    plain = Cell(0.5, "saliency", "global", False, 0)
    weighted = Cell(0.5, "saliency", "global", False, 0, class_weights="Pedestrian=3,Cyclist=3")
    widths = Cell(0.5, "catro", "widths:saliency-global", False, 0)
    rows = summarise([_result(plain, 0, 10.0), _result(weighted, 0, 20.0), _result(widths, 0, 30.0)])
    names = {row_name(r): r["mAP50"]["mean"] for r in rows}
    assert names == {"saliency / global / plain": 10.0, "saliency / global / plain / Pedestrian=3,Cyclist=3": 20.0,
                     "catro / widths of saliency-global / plain": 30.0}


def test_catro_picks_joint_subsets_only_at_widths_it_did_not_allocate():
    from accuracy_cells import joint_subsets

    assert joint_subsets(Cell(0.5, "catro", "widths:saliency-global", False, 0))
    assert joint_subsets(Cell(0.5, "catro", "uniform", False, 0))
    assert not joint_subsets(Cell(0.5, "catro", "global", False, 0))  # its own ranking allocates
    assert not joint_subsets(Cell(0.5, "l1", "widths:saliency-global", False, 0))


def test_criterion_tokens_carry_their_options_into_the_name_and_the_criterion():
    from harness.criteria import criterion_options, split_criterion

    assert split_criterion("l1") == ("l1", {})
    assert split_criterion("catro:ridge=0:roi_size=5") == ("catro", {"ridge": 0, "roi_size": 5})
    assert Cell(0.5, "catro:ridge=0", "widths:saliency-global", False, 0).name() == \
        "catro-ridge0-widths-of-saliency-global-plain-seed0"
    options = criterion_options("catro:ridge=2", seed=3, class_weights={"Pedestrian": 3.0})
    assert options == {"seed": 3, "progress": False, "class_weights": {"Pedestrian": 3.0}, "ridge": 2}
    with pytest.raises(DetpruneError, match="catro has no option bogus"):
        criterion_options("catro:bogus=1", seed=0)


def test_a_changed_default_enters_the_cache_key_resolved():
    """CATRO's ridge default changed after cells were cached: a cell names the ridge it ran with,
    so the old cells (paper's ratio) are not read back as the new default's."""
    from types import SimpleNamespace

    from accuracy_cells import Runner

    runner = Runner(SimpleNamespace(car_images=8, out="unused"), None, None, None, (224, 640), None, print)
    runner._settings = lambda fold: {"fold": fold}
    runner.train_options = lambda seed: {"seed": seed}
    default = runner.cell_settings(Cell(0.5, "catro", "widths:saliency-global", False, 0), 0)
    paper = runner.cell_settings(Cell(0.5, "catro:ridge=0", "widths:saliency-global", False, 0), 0)
    assert default["catro_ridge"] == "inf" and paper["catro_ridge"] == "0.0"
    assert default["subsets"] == paper["subsets"] == "catro"
    assert "catro_ridge" not in runner.cell_settings(Cell(0.5, "l1", "global", False, 0), 0)


def test_a_latency_cell_is_keyed_by_the_table_version(monkeypatch):
    """A rebuilt latency table (a new TABLE_VERSION) prices the cut anew: its cells are not read back."""
    from types import SimpleNamespace

    import detprune.pruning.latency_table as table
    from accuracy_cells import Runner

    runner = Runner(SimpleNamespace(car_images=8, out="unused"), None, None, None, (224, 640), None, print)
    runner._settings = lambda fold: {"fold": fold}
    runner.train_options = lambda seed: {"seed": seed}
    cell = Cell(0.62, "taylor", "latency", False, 0)
    now = runner.cell_settings(cell, 0)
    monkeypatch.setattr(table, "TABLE_VERSION", table.TABLE_VERSION + 1)
    assert runner.cell_settings(cell, 0) != now
    assert "latency_table" not in runner.cell_settings(Cell(0.5, "taylor", "cost", False, 0), 0)


def test_catro_ridge_reads_the_scatter_a_subset_keeps():
    import numpy as np
    from catro_ridge import scatter_kept

    layer = (np.array([4.0, 3.0, 2.0, 1.0]), np.array([1.0, 1.0, 1.0, 5.0]))
    between, within = scatter_kept({"conv": layer}, ridge=float("inf"))
    assert between == pytest.approx(0.7) and within == pytest.approx(0.25)  # keeps channels 0 and 1


def test_latency_table_fit_leave_one_out_is_zero_on_exact_data_and_not_otherwise():
    import numpy as np
    from latency_table_fit import leave_one_out

    x = np.array([[1.0, 1.0], [2.0, 1.0], [3.0, 1.0], [5.0, 1.0]])
    assert leave_one_out(x, 2 * x[:, 0] + 1).max() == pytest.approx(0.0, abs=1e-12)
    assert leave_one_out(x, np.array([3.0, 5.0, 9.0, 11.0])).max() > 0.05


def test_equal_latency_refuses_an_unfinished_cell_in_one_line(tmp_path):
    from equal_latency import fine_tuned, parse_args

    (tmp_path / "finetune" / "train" / "weights").mkdir(parents=True)
    (tmp_path / "finetune" / "train" / "weights" / "last.pt").write_bytes(b"")
    with pytest.raises(DetpruneError, match="no finished cell"):  # the checkpoint without its result.json
        fine_tuned(tmp_path)
    (tmp_path / "result.json").write_text("{}")
    assert fine_tuned(tmp_path).name == "last.pt"
    with pytest.raises(SystemExit):
        parse_args(["--cells", "flops0.5/x", "--sessions", "0"])
