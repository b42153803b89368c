"""A pruned Faster R-CNN reloads with one call and exports to ONNX that ONNX Runtime runs identically."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch_pruning as tp

from detprune.adapters import get_adapter
from detprune.adapters.rcnn import RcnnAdapter
from detprune.adapters.rcnn.checkpoint import layer_specs
from detprune.adapters.rcnn.coupling import DenseRcnn, dense_outputs
from detprune.errors import BadInputError
from rcnn_models import CLASSES, make_batch, randomize_norms, small_model

ADAPTER = RcnnAdapter()


@pytest.fixture(scope="module")
def pruned():
    """MobileNetV3-320 Faster R-CNN with the FPN width, a backbone group and fc6 cut.

    Norm statistics are randomised: with a fresh model's (mean 0, variance 1) the backbone's
    activations vanish, every box gets the same score, and equal scores may be ordered
    differently by two runtimes.
    """
    model = ADAPTER.prepare_for_pruning(randomize_norms(small_model(seed=3)))
    images = ADAPTER.example_inputs(model, (64, 96))
    graph = tp.DependencyGraph().build_dependency(
        model, images, verbose=False, **ADAPTER.dependency_graph_options(model)
    )
    for root, channels in {
        "backbone.fpn.layer_blocks.0.0": list(range(0, 256, 2)),
        "backbone.body.4.block.0.0": [0, 1, 2],
        "roi_heads.box_head.fc6": list(range(512)),
    }.items():
        layer = model.get_submodule(root)
        graph.get_pruning_group(layer, graph.get_pruner_of_module(layer).prune_out_channels, channels).prune()
    return model.eval()


def test_pruned_checkpoint_reloads_with_one_call(tmp_path, pruned):
    path = tmp_path / "pruned.pt"
    assert ADAPTER.save(pruned, path, meta={"criterion": "saliency", "ratio": 0.5, "where": tmp_path}) == path
    assert [p.name for p in tmp_path.iterdir()] == ["pruned.pt"]  # no temporary left behind
    assert RcnnAdapter.handles(path) and isinstance(get_adapter(path), RcnnAdapter)
    reloaded = ADAPTER.load(path)
    assert ADAPTER.class_names(reloaded) == CLASSES
    assert ADAPTER.architecture(reloaded) == "fasterrcnn_mobilenet_v3_large_320_fpn"
    assert layer_specs(reloaded) == layer_specs(pruned)
    assert reloaded.roi_heads.box_head.fc6.in_features == 128 * 49
    images = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        a = dense_outputs(pruned, images)
        b = dense_outputs(reloaded, images, a.proposals)
    for x, y in zip(a.tensors(), b.tensors()):
        assert torch.equal(x, y)
    assert reloaded.rpn._post_nms_top_n == {"training": 2000, "testing": 150}  # torchvision's own settings again
    info = torch.load(path, weights_only=True)
    assert info["meta"]["criterion"] == "saliency" and info["meta"]["where"] == str(tmp_path)


def test_bad_checkpoints_are_one_line_errors(tmp_path, pruned):
    with pytest.raises(BadInputError, match="not found"):
        ADAPTER.load_checkpoint(tmp_path / "none.pt")
    other = tmp_path / "other.pt"
    torch.save({"weights": 1}, other)
    with pytest.raises(BadInputError, match="not a detprune Faster R-CNN checkpoint"):
        ADAPTER.load_checkpoint(other)
    path = tmp_path / "pruned.pt"
    ADAPTER.save(pruned, path)
    data = torch.load(path, weights_only=True)
    data["layers"]["backbone.fpn.layer_blocks.0.0"]["out"] = 200  # widths that contradict the tensors
    torch.save(data, path)
    with pytest.raises(BadInputError, match="does not rebuild") as err:
        ADAPTER.load(path)
    assert "\n" not in str(err.value)


def test_pruned_model_exports_to_onnx_and_matches_onnxruntime(tmp_path, pruned):
    from detprune.export.onnx import OnnxModel, export_onnx

    module = ADAPTER.export_module(pruned)
    image = make_batch(96, 160).images[:1]
    result = export_onnx(module, image, tmp_path / "pruned.onnx", opset=17, output_names=["boxes", "scores", "labels"])
    assert result.opset == 17 and result.parity is not None and result.parity.max_rel <= 1e-3
    other = torch.rand(1, 3, 96, 160, generator=torch.Generator().manual_seed(5))
    boxes, scores, labels = OnnxModel(tmp_path / "pruned.onnx")(other.numpy())
    with torch.no_grad():
        ref = module(other)
    assert boxes.shape == tuple(ref[0].shape) and len(boxes) > 0
    assert len(np.unique(scores)) == len(scores)  # distinct scores: the comparison below is order-exact
    np.testing.assert_allclose(boxes, ref[0].numpy(), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(scores, ref[1].numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(labels, ref[2].numpy())
    assert labels.min() >= 0 and labels.max() < len(CLASSES)
    # the dense part exports on its own too (backbone, FPN, RPN head, box head on fixed proposals)
    dense = export_onnx(DenseRcnn(pruned).eval(), image, tmp_path / "dense.onnx", opset=17)
    assert dense.parity.max_rel <= 1e-4
