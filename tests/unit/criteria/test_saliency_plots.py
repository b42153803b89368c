"""Saliency pictures and score distributions: real PNGs, written atomically."""

from __future__ import annotations

import cv2
import torch

from detprune.criteria.plots import content_window, pick_layers, plot_saliency_overlays, plot_score_distributions
from detprune.criteria.saliency import saliency_maps
from detprune.data.batch import Letterbox
from saliency_toys import BOXES, LABELS, TinyAdapter, TinyDetector, make_batch, quiet, random_image


def test_overlays_and_distributions_are_images(tmp_path):
    adapter, model = TinyAdapter(), TinyDetector()
    batch = make_batch([random_image(i) for i in range(3)], BOXES, LABELS)
    maps = saliency_maps(adapter, model, batch)
    scores = quiet().score(adapter, model, [batch])
    written = plot_saliency_overlays(maps, tmp_path / "maps", scores=scores, max_images=2)
    assert [p.name for p in written] == ["saliency_00_memory_0.png", "saliency_01_memory_1.png"]
    for path in written:
        image = cv2.imread(str(path))
        assert image is not None and image.shape[0] > 100 and image.shape[1] > 500
    scores["unreached.conv"] = torch.zeros(5, dtype=torch.float64)  # drawn as an empty, labelled row
    path = plot_score_distributions(scores, tmp_path / "dist.png")
    assert cv2.imread(str(path)) is not None
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(["maps", "dist.png", *[p.name for p in written]])


def test_layer_choice_and_letterbox_crop():
    assert pick_layers([f"l{i}" for i in range(10)], 3) == ["l0", "l4", "l9"]
    assert pick_layers(["a", "b"], 3) == ["a", "b"]
    batch = make_batch([random_image(0, 32)], [[[0, 0, 4, 4]]])
    batch.letterboxes[0] = Letterbox(0.5, 0.0, 8.0)  # a 64x32 image letterboxed into 32x32
    batch.samples[0].width, batch.samples[0].height = 64, 32
    assert content_window(batch, 0, (32, 32)) == (slice(8, 24), slice(0, 32))
