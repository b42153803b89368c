"""Box-weighted saliency on a real torchvision Faster R-CNN (MobileNetV3-FPN) through RcnnAdapter.

Its RPN head runs once per pyramid level (one activation, several resolutions) and its box
head works on RoIs (no image geometry): both must score.
"""

from __future__ import annotations

import pytest
import torch

from detprune.criteria.saliency import BoxWeightedSaliency

rcnn_models = pytest.importorskip("rcnn_models")


def test_saliency_on_faster_rcnn_scores_every_activation_point():
    from detprune.adapters.rcnn import RcnnAdapter

    adapter = RcnnAdapter()
    model = adapter.prepare_for_pruning(rcnn_models.randomize_norms(rcnn_models.small_model()))
    criterion = BoxWeightedSaliency(progress=False)
    scores = criterion.score(adapter, model, [rcnn_models.make_batch(96, 128)])
    points = adapter.activation_points(model)
    assert list(scores) == list(points)
    for name, value in scores.items():
        assert value.dtype == torch.float64 and torch.isfinite(value).all() and (value >= 0).all(), name
    rpn_conv = next(name for name in points if name.startswith("rpn.head.conv"))
    assert (scores[rpn_conv] > 0).float().mean() > 0.5  # one module, one call per level, each with its own map
    assert criterion.last_stats.uniform_layers == ["roi_heads.box_head.fc6", "roi_heads.box_head.fc7"]
    assert (scores["roi_heads.box_head.fc6"] > 0).any()
