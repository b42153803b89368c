"""Benchmark figures: PNGs written atomically, every series told apart by colour and by marker."""

from __future__ import annotations

import matplotlib.colors
import matplotlib.image
import numpy as np
import pytest

from detprune.errors import BadInputError
from detprune.evaluation.benchmark_plots import (
    accuracy_flops_figure,
    plot_accuracy_vs_flops,
    plot_forest,
    series_styles,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_with_ink(path) -> bool:
    pixels = matplotlib.image.imread(path)
    return path.read_bytes()[:8] == PNG_MAGIC and np.ptp(pixels[..., :3]) > 0.5


def _result(diff: float, half: float) -> dict:
    entry = {"a": 0.5, "b": 0.5 + diff, "diff": diff, "diff_ci": [diff - half, diff + half], "a_ci": [0.4, 0.6],
             "b_ci": [0.4, 0.6], "resamples_defined": 1000}
    metrics = {name: dict(entry) for name in ("mAP50", "AP Pedestrian", "AP Cyclist")}
    metrics["AP_small"] = {**entry, "diff": None, "diff_ci": [None, None]}  # undefined: drawn as n/a
    return {"images": 500, "resamples": 1000, "seed": 0, "confidence": 0.95, "metrics": metrics,
            "deviation": "OtherVehicle (merged Van/Truck/Tram) ignored for Car; no DontCare regions"}


def _series() -> dict:
    configs = {}
    for c, criterion in enumerate(("saliency", "l1", "taylor", "catro", "car", "random")):
        for a, allocation in enumerate(("global", "uniform")):
            points = [(kept, 0.6 - 0.3 * (1 - kept) - 0.01 * c - 0.005 * a) for kept in (0.7, 0.5, 0.3)]
            configs[f"{criterion}/{allocation}"] = [(x, y, y - 0.02, y + 0.015) for x, y in points]
    return configs


def test_forest_plot_is_written_atomically(tmp_path):
    results = {f"saliency@{t}": _result(-0.01 * i, 0.008) for i, t in enumerate((0.7, 0.5, 0.3))}
    out = plot_forest(results, tmp_path / "figs" / "forest.png", title="fold 1")
    assert _png_with_ink(out)
    assert [p.name for p in out.parent.iterdir()] == ["forest.png"]
    with pytest.raises(BadInputError, match="at least one bootstrap result"):
        plot_forest({}, tmp_path / "empty.png")
    assert not (tmp_path / "empty.png").exists()


def test_accuracy_vs_flops_gives_every_series_its_own_colour_and_marker(tmp_path):
    series = _series()
    baselines = {"baseline": (1.0, 0.61), "same-budget baseline": (1.0, 0.615)}
    fig = accuracy_flops_figure(series, baselines=baselines)
    lines = [line for line in fig.axes[0].get_lines() if not line.get_label().startswith("_")]
    assert sorted(line.get_label() for line in lines) == sorted([*series, *baselines])
    colours = [matplotlib.colors.to_hex(line.get_color()) for line in lines]
    markers = [line.get_marker() for line in lines]
    assert len(set(colours)) == len(lines) and len(set(markers)) == len(lines), (colours, markers)
    out = plot_accuracy_vs_flops(series, tmp_path / "map50_vs_flops.png", baselines=baselines)
    assert _png_with_ink(out) and [p.name for p in tmp_path.iterdir()] == ["map50_vs_flops.png"]


def test_too_many_series_is_a_one_line_error_not_a_repeated_style():
    with pytest.raises(BadInputError, match="does not contain its value"):
        accuracy_flops_figure({"l1": [(0.5, 0.4, 0.45, 0.5)]})
    assert len(series_styles(16)) == 16
    with pytest.raises(BadInputError, match="17 series"):
        series_styles(17)
