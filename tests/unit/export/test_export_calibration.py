"""Calibration images: found in dataset layouts, drawn by seed, prepared as the model sees them."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from detprune.data.batch import PAD_VALUE
from detprune.errors import BadInputError
from detprune.export.calibration import find_images, iter_batches, load_image, select_images


def _write_images(folder, names, size=(40, 60)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(names))
    for name in names:
        cv2.imwrite(str(folder / name), rng.integers(0, 255, (*size, 3), dtype=np.uint8))


def test_selection_is_deterministic_by_seed_and_holds_one_out(tmp_path):
    names = [f"{i:06d}.png" for i in range(30)]
    _write_images(tmp_path / "a", names)
    _write_images(tmp_path / "b", list(reversed(names)))  # created in the other order
    first = select_images(tmp_path / "a", 10, seed=3)
    again = select_images(tmp_path / "a", 10, seed=3)
    other_order = select_images(tmp_path / "b", 10, seed=3)
    other_seed = select_images(tmp_path / "a", 10, seed=4)
    assert first == again
    assert [p.name for p in first.calibration] == [p.name for p in other_order.calibration]
    assert [p.name for p in first.calibration] != [p.name for p in other_seed.calibration]
    assert len(first.calibration) == 10 and len(set(first.calibration)) == 10
    assert first.holdout is not None and first.holdout not in first.calibration


def test_too_few_images_calibrate_on_all_without_holdout(tmp_path):
    _write_images(tmp_path, ["a.jpg", "b.jpg", "c.jpg"])
    split = select_images(tmp_path, 5, seed=0)
    assert sorted(p.name for p in split.calibration) == ["a.jpg", "b.jpg", "c.jpg"]
    assert split.holdout is None


def test_kitti_layout_uses_the_camera_images_only(tmp_path):
    root = tmp_path / "kitti"
    _write_images(root / "training" / "image_2", ["000000.png", "000001.png"])
    _write_images(root / "training" / "image_3", ["000000.png"])  # the other camera is not calibration data
    (root / "training" / "label_2").mkdir()
    assert [p.parent.name for p in find_images(root)] == ["image_2", "image_2"]


@pytest.mark.parametrize("case", ["missing", "empty", "file"])
def test_bad_calibration_source_is_one_line(tmp_path, case):
    source = tmp_path / "data"
    if case == "empty":
        source.mkdir()
        (source / "notes.txt").write_text("no images here")
    elif case == "file":
        source.write_text("x")
    with pytest.raises(BadInputError) as err:
        select_images(source, 10)
    assert "\n" not in str(err.value) and str(source) in str(err.value)


def test_images_are_letterboxed_like_the_model_input(tmp_path):
    image = np.full((40, 160, 3), 200, dtype=np.uint8)  # wide: padded above and below
    cv2.imwrite(str(tmp_path / "wide.png"), image)
    array = load_image(tmp_path / "wide.png", 64)
    assert array.shape == (3, 64, 64) and array.dtype == np.float32
    assert np.allclose(array[:, 0, :], PAD_VALUE / 255.0)  # grey padding rows
    assert np.allclose(array[:, 32, :], 200 / 255.0)  # the image band in the middle


def test_batches_drop_a_short_last_batch(tmp_path):
    _write_images(tmp_path, [f"{i}.png" for i in range(5)])
    paths = find_images(tmp_path)
    batches = list(iter_batches(paths, (32, 64), batch_size=2))
    assert [b.shape for b in batches] == [(2, 3, 32, 64), (2, 3, 32, 64)]
    assert all(0.0 <= b.min() and b.max() <= 1.0 for b in batches)
