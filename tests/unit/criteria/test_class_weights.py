"""Class priorities of the data-driven criteria.

The toy detector's stem copies the image's red plane into channel 0 and its green plane into
channel 1; class A's boxes are red patches, class B's green ones. So channel 0 serves class A
alone and channel 1 class B alone, by construction: weighting A must raise channel 0 and leave
channel 1 where it was, and weights of 1 must change nothing at all.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from detprune.adapters.base import DetectorAdapter
from detprune.cli import main
from detprune.criteria import get_criterion
from detprune.criteria.car import CAR
from detprune.criteria.catro import CATRO
from detprune.criteria.class_weights import parse_class_weights, weight_table
from detprune.data.types import Detections
from detprune.errors import DetpruneError
from pruning_toys import one_thread  # noqa: F401
from saliency_toys import make_batch

CLASSES = ["A", "B"]


class ColourNet(nn.Module):
    """stem: red, green, blue (1x1, no bias); head: one logit per pixel reading the three."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 3, 1, bias=False)
        self.stem.weight.data.copy_(torch.eye(3)[:, :, None, None])
        self.head = nn.Conv2d(3, 1, 1)
        self.head.weight.data.copy_(torch.tensor([1.0, 1.0, 0.5])[None, :, None, None])
        self.head.bias.data.fill_(-1.0)
        self.double()

    def forward(self, x):
        return self.head(self.stem(x))


class ColourAdapter(DetectorAdapter):
    """Utility: mean logit inside each GT box; loss: per-box BCE of 'object here', each box its own term."""

    family = "colour"

    @classmethod
    def handles(cls, spec) -> bool:
        return False

    def class_names(self, model):
        return list(CLASSES)

    def activation_points(self, model):
        return {"stem": model.stem}

    def detection_utility(self, model, batch):
        logits = model(batch.images.to(torch.float64))[:, 0]
        return sum(logits[i, y0:y1, x0:x1].mean() for i, boxes in enumerate(batch.boxes)
                   for x0, y0, x1, y1 in boxes.long().tolist())

    def weighted_detection_loss(self, model, batch, box_weights):
        logits = model(batch.images.to(torch.float64))[:, 0]
        total = logits.new_zeros(())
        for i, (boxes, weights) in enumerate(zip(batch.boxes, box_weights)):
            for (x0, y0, x1, y1), w in zip(boxes.long().tolist(), weights.tolist()):
                patch = logits[i, y0:y1, x0:x1]
                total = total + w * F.binary_cross_entropy_with_logits(patch, torch.ones_like(patch))
        return total

    def detection_loss(self, model, batch):
        return self.weighted_detection_loss(
            model, batch, [torch.ones(len(b), dtype=torch.float64) for b in batch.boxes]
        )

    def predict(self, model, batch, **kw):
        model(batch.images.to(torch.float64))  # CATRO's forward pass
        return [Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
                for _ in range(len(batch))]

    def _unused(self, *args, **kwargs):
        raise NotImplementedError("not needed by the criteria")

    load = prepare_for_pruning = example_inputs = protected_layers = finetune = save = load_checkpoint = _unused


class LossOnlyAdapter(ColourAdapter):
    """A family whose loss cannot weigh its boxes."""

    weighted_detection_loss = None

    def detection_loss(self, model, batch):
        return ColourAdapter.weighted_detection_loss(self, model, batch, [torch.ones(len(b)) for b in batch.boxes])


def colour_batches(count: int = 4, red: float = 0.6, green: float = 1.0, noise: float = 0.0):
    """Class A: red patches (``red``), class B: green patches (``green``), on a black image."""
    batches = []
    for i in range(count):
        g = torch.Generator().manual_seed(i)
        image = torch.rand(3, 32, 32, generator=g, dtype=torch.float64) * noise
        image[2] += 0.2
        boxes = [[2 + i, 3, 12 + i, 13], [17, 16 + i % 3, 29, 28 + i % 3]]
        for (x0, y0, x1, y1), plane, value in zip(boxes, (0, 1), (red, green)):
            image[plane, y0:y1, x0:x1] += value
        batches.append(make_batch([image], [boxes], [[0, 1]]))
    return batches


def rank(scores: torch.Tensor, channel: int) -> int:
    """0 for the top channel."""
    return int((scores > scores[channel]).sum())


@pytest.mark.parametrize("name", ["saliency", "taylor", "snip"])
def test_weighting_a_class_raises_exactly_the_channels_its_boxes_use(name):
    plain = get_criterion(name, progress=False).score(ColourAdapter(), ColourNet(), colour_batches())["stem"]
    weighted = get_criterion(name, class_weights={"A": 4.0}, progress=False).score(
        ColourAdapter(), ColourNet(), colour_batches())["stem"]
    assert rank(plain, 0) > rank(plain, 1)  # unweighted, the brighter green class's channel leads
    assert rank(weighted, 0) < rank(weighted, 1)  # weighted, A's channel overtakes it
    # by construction channel 0 sees only A's boxes and channel 1 only B's: one scales, one stays
    factor = 16.0 if name == "taylor" else 4.0  # taylor squares w*g: (4 g)^2
    assert torch.allclose(weighted[0], plain[0] * factor, rtol=1e-12)
    assert torch.allclose(weighted[1], plain[1], rtol=1e-12)


@pytest.mark.parametrize("name", ["saliency", "taylor", "snip", "catro"])
def test_weights_of_one_equal_no_weights_exactly(name):
    batches = colour_batches(noise=0.2)
    plain = get_criterion(name, progress=False).score(ColourAdapter(), ColourNet(), batches)["stem"]
    ones = get_criterion(name, class_weights={"A": 1, "B": 1.0}, progress=False).score(
        ColourAdapter(), ColourNet(), batches)["stem"]
    assert torch.equal(plain, ones)


def test_saliency_maps_draw_the_weighted_boxes():
    from detprune.criteria.saliency import saliency_maps

    batch = colour_batches(1)[0]
    criterion = get_criterion("saliency", class_weights={"B": 3.0}, progress=False)
    weighted = saliency_maps(ColourAdapter(), ColourNet(), batch, criterion=criterion).weights["stem"][0]
    plain = saliency_maps(ColourAdapter(), ColourNet(), batch).weights["stem"][0]
    assert float(weighted.sum()) == pytest.approx(float(plain.sum()) + 2.0)  # each box has unit mass: B's now 3


def test_catro_keeps_the_channel_of_the_weighted_class():
    def kept(weights):
        catro = CATRO(samples_per_class=8, class_weights=weights, progress=False)
        return catro.kept_sets(ColourAdapter(), ColourNet(), colour_batches(8, red=0.8, noise=0.3), keep_fraction=1 / 3)

    assert kept(None) == {"stem": [1]}  # green separates B better than red separates A
    assert kept({"A": 5.0}) == {"stem": [0]}  # A's samples count five times: separating A wins
    assert kept({"B": 5.0}) == {"stem": [1]}


def test_car_weighs_the_loss_per_box_or_says_it_cannot():
    batches = colour_batches(2)
    plain = CAR(metric="loss", progress=False).score(ColourAdapter(), ColourNet(), batches)["stem"]
    weighted = CAR(metric="loss", class_weights={"A": 3.0}, progress=False).score(
        ColourAdapter(), ColourNet(), batches
    )["stem"]
    assert float(weighted[0]) > float(plain[0]) and float(weighted[1]) == pytest.approx(float(plain[1]))
    with pytest.raises(DetpruneError, match="cannot weigh classes") as err:
        CAR(metric="loss", class_weights={"A": 3.0}, progress=False).score(LossOnlyAdapter(), ColourNet(), batches)
    assert "\n" not in str(err.value)
    same = CAR(metric="loss", class_weights={"A": 1.0}, progress=False).score(LossOnlyAdapter(), ColourNet(), batches)
    assert torch.equal(same["stem"], plain)  # weights of 1 are no weights: nothing to refuse


def test_car_map_weighs_the_per_class_drops():
    from detprune.criteria.car import HeldOut

    held = HeldOut.__new__(HeldOut)
    held.class_weights = {"A": 3.0, "B": 1.0}
    assert held.weighted_drop({"A": 0.5, "B": 0.4}, {"A": 0.1, "B": 0.4}) == pytest.approx(3 * 0.4 / 4)


def test_unknown_class_and_bad_weights_are_one_line_errors():
    for bad, says in [({"A": 0}, "positive"), ({"A": -2}, "positive"), ({"A": "x"}, "CLASS=WEIGHT"),
                      ("A=2,B", "CLASS=WEIGHT"), ([("A", 2)], "mapping")]:
        with pytest.raises(DetpruneError, match=says) as err:
            get_criterion("saliency", class_weights=bad if isinstance(bad, (dict, list)) else parse_class_weights(bad))
        assert "\n" not in str(err.value)
    with pytest.raises(DetpruneError, match="unknown class.*Dog.*A, B"):
        get_criterion("taylor", class_weights={"Dog": 2.0}, progress=False).score(
            ColourAdapter(), ColourNet(), colour_batches(1)
        )
    assert weight_table({"B": 2.0}, CLASSES).tolist() == [1.0, 2.0]
    assert weight_table({"A": 1.0}, CLASSES) is None


def test_parse_reads_text_yaml_files_and_recipe_mappings(tmp_path):
    assert parse_class_weights("Pedestrian=3, Cyclist=2.5") == {"Pedestrian": 3.0, "Cyclist": 2.5}
    path = tmp_path / "weights.yaml"
    path.write_text("Pedestrian: 3\nCyclist: 2\n")
    assert parse_class_weights(str(path), ["Car", "Pedestrian", "Cyclist"]) == {"Pedestrian": 3.0, "Cyclist": 2.0}
    assert parse_class_weights({"Car": 2}) == {"Car": 2.0}
    with pytest.raises(DetpruneError, match="not found"):
        parse_class_weights(str(tmp_path / "missing.yaml"))
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(DetpruneError, match="mapping"):
        parse_class_weights(str(tmp_path / "list.yaml"))


def test_yolo_loss_weighs_its_boxes():
    from detprune.adapters.yolo import YoloAdapter
    from detprune.data.batch import Batch, Letterbox

    torch.manual_seed(0)
    adapter = YoloAdapter()
    model = adapter.load("yolov8n.yaml", class_names=["A", "B", "C"]).train()
    boxes = [torch.tensor([[10.0, 10, 50, 60], [60, 60, 120, 110], [0, 0, 5, 5]]), torch.tensor([[20.0, 30, 90, 100]])]
    batch = Batch(torch.rand(2, 3, 128, 128), boxes, [torch.tensor([0, 1, -1]), torch.tensor([2])],
                  [torch.tensor([False, False, True]), torch.tensor([False])], [Letterbox(1.0, 0, 0)] * 2, [])
    with torch.no_grad():
        plain = float(adapter.detection_loss(model, batch))
        ones = float(adapter.weighted_detection_loss(model, batch, [torch.ones(3), torch.ones(1)]))
        heavier = float(adapter.weighted_detection_loss(model, batch, [torch.tensor([3.0, 1, 1]), torch.ones(1)]))
    assert ones == pytest.approx(plain, rel=1e-6) and heavier > plain


def _one_line_failure(capsys, argv, out) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and not out.exists()


def test_cli_bad_class_weights_are_one_line_and_write_nothing(synthetic_kitti, tmp_path, capsys):
    common = ["--model", "yolov5n.yaml", "--random-init",
              "--data", str(synthetic_kitti), "--max-images", "2", "--imgsz", "64",
              "--device", "cpu"]
    for weights in ("Dog=2", "Pedestrian=0", "Pedestrian"):
        out = tmp_path / f"score-{weights}"
        _one_line_failure(
            capsys, ["score", *common, "--criterion", "taylor", "--class-weights", weights, "--out", str(out)], out
        )
        out = tmp_path / f"prune-{weights}"
        _one_line_failure(
            capsys,
            [
                "prune",
                *common,
                "--criterion",
                "taylor",
                "--class-weights",
                weights,
                "--ratio",
                "0.2",
                "--no-eval",
                "--out",
                str(out),
            ],
            out,
        )
    out = tmp_path / "l1"
    _one_line_failure(
        capsys, ["score", *common, "--criterion", "l1", "--class-weights", "Pedestrian=2", "--out", str(out)], out
    )


def test_cli_records_the_class_weights(synthetic_kitti, tmp_path, capsys):
    common = ["--model", "yolov5n.yaml", "--random-init",
              "--data", str(synthetic_kitti), "--max-images", "2", "--batch-size", "2",
              "--imgsz", "64", "--device", "cpu", "--criterion", "taylor", "--class-weights", "Pedestrian=3,Cyclist=3"]
    assert main(["score", *common, "--out", str(tmp_path / "score")]) == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "score" / "summary.json").read_text())
    assert summary["options"]["class_weights"] == {"Pedestrian": 3.0, "Cyclist": 3.0}
    assert main(["prune", *common, "--ratio", "0.2", "--no-eval", "--out", str(tmp_path / "prune")]) == 0, \
        capsys.readouterr().err
    record = json.loads((tmp_path / "prune" / "prune.json").read_text())
    assert record["class_weights"] == {"Pedestrian": 3.0, "Cyclist": 3.0}
