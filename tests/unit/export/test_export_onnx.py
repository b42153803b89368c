"""ONNX export: parity with PyTorch on ONNX Runtime, atomic writes, one-line errors on bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from detprune.errors import BadInputError, UnsupportedError
from detprune.export.onnx import ExportError, OnnxModel, export_onnx, graph_precision, load_onnx
from export_toys import IMGSZ, yolo_for_export


@pytest.fixture(scope="module")
def yolo():
    return yolo_for_export()


@pytest.fixture(scope="module")
def exported(yolo, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "yolo.onnx"
    return export_onnx(yolo, torch.rand(1, 3, IMGSZ, IMGSZ), path)


def test_yolo_fp32_graph_matches_pytorch(yolo, exported):
    assert exported.path.is_file()
    assert exported.parity.max_rel < 1e-3 and exported.parity.reference == "pytorch"
    assert graph_precision(load_onnx(exported.path)) == "fp32"
    runner = OnnxModel(exported.path)
    rng = np.random.default_rng(1)
    a, b = rng.random((1, 3, IMGSZ, IMGSZ), dtype=np.float32), rng.random((1, 3, IMGSZ, IMGSZ), dtype=np.float32)
    out_a, out_b = runner(a)[0], runner(b)[0]
    with torch.no_grad():
        expected = yolo(torch.from_numpy(a)).numpy()
    np.testing.assert_allclose(out_a, expected, rtol=1e-3, atol=1e-3)
    # the output depends on the image, so the parity figures above can tell a broken graph
    assert np.abs(out_a - out_b).max() > 100 * exported.parity.max_abs


def test_parameter_count_is_the_folded_conv_weights(yolo, exported):
    # BatchNorm folds into its conv: every conv keeps its weight and gains a bias
    expected = sum(m.weight.numel() + m.out_channels for m in yolo.modules() if isinstance(m, nn.Conv2d))
    dfl = yolo.model[-1].dfl.conv  # the DFL conv has no bias and keeps none
    assert exported.num_parameters == expected - dfl.out_channels


def test_dynamic_batch_runs_other_batch_sizes(yolo, tmp_path):
    result = export_onnx(yolo, torch.rand(1, 3, IMGSZ, IMGSZ), tmp_path / "dyn.onnx", dynamic_batch=True)
    assert result.input_shape[0] == "batch"
    x = torch.rand(3, 3, IMGSZ, IMGSZ)
    got = OnnxModel(result.path)(x)[0]
    with torch.no_grad():
        expected = yolo(x).numpy()
    assert got.shape[0] == 3
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)


class _Drifting(nn.Module):
    """Tracing bakes a Python float into the graph, so the graph differs from every eager call."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.conv(x) * float(self.calls)


class _NotExportable(nn.Module):
    """``cummax`` has no ONNX translation in opset 17."""

    def forward(self, x):
        return torch.cummax(x, dim=1)[0]


@pytest.mark.parametrize("module", [_Drifting(), _NotExportable()], ids=["parity-fails", "exporter-fails"])
def test_failed_export_leaves_no_file(module, tmp_path):
    target = tmp_path / "model.onnx"
    with pytest.raises(ExportError) as err:
        export_onnx(module, torch.rand(1, 3, 16, 16), target)
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temporary sibling


def test_failed_export_keeps_an_older_file(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous")
    with pytest.raises(ExportError):
        export_onnx(_Drifting(), torch.rand(1, 3, 16, 16), target)
    assert target.read_bytes() == b"previous"


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_onnx_is_a_one_line_error(exported, tmp_path, damage):
    data = exported.path.read_bytes()
    bad = tmp_path / f"{damage}.onnx"
    bad.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x08\x07not a model" * 50, "empty": b""}[damage])
    with pytest.raises(BadInputError) as err:
        load_onnx(bad)
    message = str(err.value)
    assert "\n" not in message and str(bad) in message
    with pytest.raises(BadInputError):
        OnnxModel(bad)


def test_missing_onnx_and_old_opset_are_refused(yolo, tmp_path):
    with pytest.raises(BadInputError, match="not found"):
        load_onnx(tmp_path / "absent.onnx")
    with pytest.raises(UnsupportedError, match="opset 13"):
        export_onnx(yolo, torch.rand(1, 3, IMGSZ, IMGSZ), tmp_path / "old.onnx", opset=13)
    assert not (tmp_path / "old.onnx").exists()
