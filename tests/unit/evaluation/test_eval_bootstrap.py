"""The paired bootstrap: its point estimate is pycocotools' number, its intervals behave."""

from __future__ import annotations

import time

import numpy as np
import pytest

from detprune.data.types import DetectionSet, Detections, Sample
from detprune.errors import BadInputError
from detprune.evaluation.bootstrap import format_bootstrap, metric_values, paired_bootstrap, resample_weights
from detprune.evaluation.coco import evaluate_coco
from detprune.evaluation.coco_matching import match_detections

CLASSES = ["Car", "Pedestrian", "Cyclist"]


def _box(rng, width, height, side_range=(6, 160)):
    w = rng.uniform(*side_range)
    h = w * rng.uniform(0.5, 2.0)
    x, y = rng.uniform(0, width - w), rng.uniform(0, height - min(h, height - 1))
    return [x, y, x + w, min(y + h, height)]


def scene(seed: int = 0, images: int = 24) -> DetectionSet:
    """Objects of every size, ignore boxes of a class and class-less regions (KITTI DontCare)."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(images):
        n = int(rng.integers(0, 9))
        boxes = [_box(rng, 640, 360) for _ in range(n)]
        labels = rng.integers(0, len(CLASSES), n).tolist()
        ignore = (rng.random(n) < 0.15).tolist()
        if i % 3 == 0:  # a class-less region
            boxes.append(_box(rng, 640, 360, (40, 120)))
            labels.append(-1)
            ignore.append(True)
        samples.append(Sample(f"/frames/{i:06d}.png", 640, 360, np.array(boxes).reshape(-1, 4), labels, ignore))
    return DetectionSet(list(CLASSES), samples, name="scene")


def predictions(dataset: DetectionSet, seed: int = 1) -> list[Detections]:
    """Jittered hits, duplicates, misses, false positives, wrong classes; scores on a coarse grid
    so that ties across images test COCO's ordering; one image with more than 100 detections."""
    rng = np.random.default_rng(seed)
    out = []
    for i, sample in enumerate(dataset.samples):
        boxes, scores, labels = [], [], []
        for box, label in zip(sample.boxes, sample.labels):
            for _ in range(int(rng.integers(0, 3))):
                jitter = rng.normal(0, 0.08, 4) * (box[2:] - box[:2]).repeat(2)
                boxes.append(box + jitter)
                scores.append(np.round(rng.random(), 1))
                labels.append(label if label >= 0 and rng.random() < 0.85 else int(rng.integers(0, len(CLASSES))))
        extra = 130 if i == 5 else int(rng.integers(0, 6))
        for _ in range(extra):
            boxes.append(_box(rng, 640, 360))
            scores.append(np.round(rng.random() * 0.6, 2))
            labels.append(0 if i == 5 else int(rng.integers(0, len(CLASSES))))
        out.append(Detections(np.array(boxes).reshape(-1, 4), scores, labels))
    return out


def _point(dataset, preds, metrics):
    table = match_detections(dataset, preds)
    return {k: float(v[0]) for k, v in metric_values(table, np.ones((1, len(dataset)), np.int32), metrics).items()}


def _assert_equal_to_pycocotools(dataset, preds):
    reference = evaluate_coco(dataset, preds)
    names = [
        "mAP50",
        "mAP50-95",
        "mAP75",
        "AP_small",
        "AP_medium",
        "AP_large",
        *(f"AP {c}" for c in dataset.class_names),
    ]
    ours = _point(dataset, preds, names)
    expected = {
        "mAP50": reference["AP50"],
        "mAP50-95": reference["AP"],
        "mAP75": reference["AP75"],
        "AP_small": reference["AP_small"],
        "AP_medium": reference["AP_medium"],
        "AP_large": reference["AP_large"],
        **{f"AP {c}": reference["per_class_AP"][c] for c in dataset.class_names},
    }
    checked = 0
    for name, value in expected.items():
        if value is None:
            assert np.isnan(ours[name]), name
        else:
            assert ours[name] == pytest.approx(value, abs=1e-9), name
            checked += 1
    return checked


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_point_estimate_is_pycocotools(seed):
    dataset = scene(seed)
    assert _assert_equal_to_pycocotools(dataset, predictions(dataset, seed + 10)) >= 8


def test_point_estimate_is_pycocotools_on_real_kitti_frames(kitti_tiny):
    from detprune.data.kitti import read_kitti

    dataset = read_kitti(kitti_tiny, progress=False)
    assert any((s.labels < 0).any() for s in dataset) and any((s.ignore & (s.labels >= 0)).any() for s in dataset)
    assert _assert_equal_to_pycocotools(dataset, predictions(dataset, 3)) >= 8


def test_identical_models_differ_by_exactly_zero():
    dataset = scene(4)
    preds = predictions(dataset, 5)
    result = paired_bootstrap(dataset, preds, preds, metrics=("mAP50", "mAP50-95", "AP_small", "AP Car"), resamples=200)
    for name, m in result["metrics"].items():
        assert m["diff"] == 0.0 and m["diff_ci"] == [0.0, 0.0], name
        assert m["a_ci"] == m["b_ci"] and m["a_ci"][0] < m["a_ci"][1], name


def test_one_extra_object_found_is_a_positive_difference_with_interval_above_zero():
    dataset = scene(6, images=40)
    full = []
    for sample in dataset.samples:  # every object found once, plus a low-scored false positive
        keep = ~sample.ignore & (sample.labels >= 0)
        boxes = np.vstack([sample.boxes[keep], [[0, 0, 50, 50]]])
        full.append(Detections(boxes, [*np.linspace(0.9, 0.5, keep.sum()), 0.1], [*sample.labels[keep], 0]))
    image = next(i for i, s in enumerate(dataset.samples) if (s.labels == 0).any() and (~s.ignore).any())
    first = int(np.flatnonzero(full[image].labels == 0)[0])
    missing = list(full)
    keep = np.arange(len(full[image].labels)) != first
    missing[image] = Detections(full[image].boxes[keep], full[image].scores[keep], full[image].labels[keep])
    result = paired_bootstrap(dataset, missing, full, metrics=("mAP50", "AP Car"), resamples=300, seed=3)
    for name in ("mAP50", "AP Car"):
        m = result["metrics"][name]
        assert m["diff"] > 0 and m["diff_ci"][0] >= 0 and m["diff_ci"][1] > 0, (name, m)
    # the image is left out of some resamples: there the two models are equal
    assert result["metrics"]["AP Car"]["diff_ci"][0] == 0.0


def test_same_seed_same_result_other_seed_other_intervals():
    dataset = scene(7)
    a, b = predictions(dataset, 8), predictions(dataset, 9)
    first = paired_bootstrap(dataset, a, b, resamples=150, seed=11)
    assert paired_bootstrap(dataset, a, b, resamples=150, seed=11) == first
    other = paired_bootstrap(dataset, a, b, resamples=150, seed=12)
    assert other["metrics"]["mAP50"]["diff"] == first["metrics"]["mAP50"]["diff"]
    assert other["metrics"]["mAP50"]["diff_ci"] != first["metrics"]["mAP50"]["diff_ci"]
    assert "mAP50" in format_bootstrap(first) and "150 resamples" in format_bootstrap(first)


def test_resample_weights_are_draws_of_every_image_count():
    weights = resample_weights(50, 30, seed=0)
    assert weights.shape == (30, 50) and (weights.sum(axis=1) == 50).all() and weights.min() >= 0
    assert (resample_weights(50, 30, seed=0) == weights).all()


def test_a_class_without_ground_truth_in_a_resample_is_left_out_of_the_mean():
    dataset = scene(8)
    preds = predictions(dataset, 9)
    table = match_detections(dataset, preds, ["all"])
    cyclists = np.array([int((s.labels == 2).sum() > 0) for s in dataset.samples])
    weights = np.ones((1, len(dataset)), np.int32) * (1 - cyclists)  # only images without cyclists
    values = metric_values(table, weights, ["AP Cyclist", "AP Car", "AP Pedestrian", "mAP50-95"])
    assert np.isnan(values["AP Cyclist"][0])
    assert values["mAP50-95"][0] == pytest.approx((values["AP Car"][0] + values["AP Pedestrian"][0]) / 2)


def test_bad_metric_and_resamples_are_one_line_errors():
    dataset = scene(0, images=4)
    preds = predictions(dataset)
    with pytest.raises(BadInputError, match="unknown metric 'AP Truck'.*AP Car"):
        paired_bootstrap(dataset, preds, preds, metrics=("AP Truck",), resamples=10)
    with pytest.raises(BadInputError, match="resamples"):
        paired_bootstrap(dataset, preds, preds, resamples=0)


def test_a_thousand_resamples_of_a_thousand_images_take_seconds():
    rng = np.random.default_rng(0)
    samples, preds = [], []
    for i in range(1000):  # about 20k detections per model, most of them Car
        n = int(rng.integers(3, 12))
        boxes = np.array([_box(rng, 1242, 375, (8, 200)) for _ in range(n)])
        labels = rng.choice(3, n, p=[0.75, 0.18, 0.07])
        samples.append(Sample(f"/f/{i:06d}.png", 1242, 375, boxes, labels))
        m = 20
        det = np.vstack([boxes + rng.normal(0, 2, boxes.shape), [_box(rng, 1242, 375) for _ in range(m - n)]])
        preds.append(Detections(det, rng.random(m).astype(np.float32), np.concatenate([labels, rng.choice(3, m - n)])))
    dataset = DetectionSet(list(CLASSES), samples)
    other = [Detections(d.boxes, np.clip(d.scores + rng.normal(0, 0.05, len(d.scores)), 0, 1), d.labels) for d in preds]
    start = time.perf_counter()
    result = paired_bootstrap(
        dataset,
        preds,
        other,
        metrics=("mAP50", "mAP50-95", "AP_small", "AP Car", "AP Pedestrian", "AP Cyclist"),
        resamples=1000,
    )
    elapsed = time.perf_counter() - start
    assert sum(len(d.scores) for d in preds) == 20_000
    assert result["metrics"]["mAP50"]["resamples_defined"] == 1000
    assert elapsed < 60, elapsed


def test_detections_file_round_trip_is_exact_and_checked_against_the_dataset(tmp_path):
    from detprune.data.detections_io import load_detections, save_detections

    dataset = scene(9, images=6)
    preds = predictions(dataset, 2)
    preds[2] = Detections(np.zeros((0, 4)), [], [])
    path = save_detections(tmp_path / "cell" / "val.npz", preds, dataset)
    back = load_detections(path, dataset)
    assert len(back) == len(preds) and not list(path.parent.glob(".*"))
    for got, want in zip(back, preds):
        assert np.array_equal(got.boxes, want.boxes) and np.array_equal(got.scores, want.scores)
        assert np.array_equal(got.labels, want.labels) and got.scores.dtype == np.float32
    assert paired_bootstrap(dataset, preds, back, resamples=20)["metrics"]["mAP50"]["diff_ci"] == [0.0, 0.0]
    with pytest.raises(BadInputError, match="first differ at position 0"):
        load_detections(path, dataset.subset([1, 2, 3, 4, 5]))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(BadInputError, match="cannot be read as .npz"):
        load_detections(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", boxes=np.zeros((1, 4)))
    with pytest.raises(BadInputError, match="not a detprune detections file"):
        load_detections(tmp_path / "other.npz")
    with pytest.raises(BadInputError, match="no such detections file"):
        load_detections(tmp_path / "absent.npz")
