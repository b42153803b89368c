"""Synthetic driving scenes: deterministic, KITTI-valid, many small objects, occlusion, truncation."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from detprune.data.kitti import read_kitti
from detprune.data.synthetic import generate_scenes, render_scene
from detprune.errors import DetpruneError


def digest(root) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def parse(lines: list[str]) -> list[list[str]]:
    return [line.split() for line in lines]


def test_fixture_set_is_a_valid_kitti_folder(synthetic_kitti):
    data = read_kitti(synthetic_kitti, "kitti8")  # every line parses, every box lies in its image
    assert len(data) == 12
    assert {(s.width, s.height) for s in data} == {(416, 128)}
    for path in (synthetic_kitti / "label_2").glob("*.txt"):
        for fields in parse(path.read_text().splitlines()):
            assert len(fields) == 15
            assert fields[0] in {"Car", "Pedestrian", "Cyclist", "DontCare"}
    assert sum(s.num_objects for s in data) > 12 * 3


def test_same_seed_same_bytes_other_seed_differs(tmp_path, synthetic_kitti):
    again = generate_scenes(tmp_path / "again", num_images=12, seed=0, width=416, height=128, progress=False)
    assert digest(again) == digest(synthetic_kitti)
    other = generate_scenes(tmp_path / "other", num_images=3, seed=1, width=416, height=128, progress=False)
    first, second = digest(synthetic_kitti), digest(other)
    for name in ("image_2/000000.png", "label_2/000000.txt", "label_2/000002.txt"):
        assert first[name] != second[name]
    # An image depends on (seed, index) only, not on how many are made.
    assert (
        second["image_2/000000.png"]
        == digest(generate_scenes(tmp_path / "one", 1, seed=1, width=416, height=128, progress=False))[
            "image_2/000000.png"
        ]
    )


def test_a_third_or_more_of_the_boxes_are_small_at_kitti_resolution():
    small = total = 0
    for index in range(8):
        image, lines = render_scene(0, index, 1242, 375)
        assert image.shape == (375, 1242, 3) and image.dtype == np.uint8
        for fields in parse(lines):
            if fields[0] == "DontCare":
                continue
            x1, y1, x2, y2 = map(float, fields[4:8])
            assert 0 <= x1 < x2 <= 1241 and 0 <= y1 < y2 <= 374
            total += 1
            small += (x2 - x1) * (y2 - y1) < 32 * 32
    assert total >= 40
    assert small / total >= 1 / 3


def test_occlusion_truncation_and_perspective():
    occlusion, truncated, rows = set(), 0, []
    for index in range(40):
        _, lines = render_scene(3, index, 416, 128)
        for fields in parse(lines):
            if fields[0] == "DontCare":
                continue
            occlusion.add(int(fields[2]))
            truncated += float(fields[1]) > 0.05
            y2, height, z = float(fields[7]), float(fields[7]) - float(fields[5]), float(fields[13])
            rows.append((z, y2, height / float(fields[8])))
    assert occlusion >= {0, 1, 2}
    assert truncated >= 3
    z, bottom, px_per_metre = map(np.array, zip(*rows))
    # Farther objects stand higher in the image (toward the horizon) and are smaller.
    assert np.corrcoef(z, bottom)[0, 1] < -0.5
    assert np.corrcoef(1 / z, px_per_metre)[0, 1] > 0.95


def test_images_have_content_and_classes_have_their_own_shapes(synthetic_kitti):
    import cv2

    image = cv2.imread(str(synthetic_kitti / "image_2" / "000000.png"))
    assert image.shape == (128, 416, 3) and image.std() > 20
    aspect: dict[str, list[float]] = {}
    for index in range(30):
        for fields in parse(render_scene(5, index, 416, 128)[1]):
            x1, y1, x2, y2 = map(float, fields[4:8])
            if fields[0] != "DontCare" and float(fields[1]) == 0:
                aspect.setdefault(fields[0], []).append((x2 - x1) / (y2 - y1))
    median = {k: float(np.median(v)) for k, v in aspect.items()}
    assert median["Pedestrian"] < 0.6 < median["Cyclist"] < median["Car"]


def test_existing_folder_is_refused_unless_exist_ok(tmp_path):
    root = generate_scenes(tmp_path / "s", 1, width=128, height=64, progress=False)
    with pytest.raises(DetpruneError, match="already exists"):
        generate_scenes(root, 1, width=128, height=64, progress=False)
    generate_scenes(root, 2, width=128, height=64, progress=False, exist_ok=True)
    assert len(list((root / "image_2").iterdir())) == 2
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DetpruneError, match="not a synthetic set"):
        generate_scenes(foreign, 1, width=128, height=64, progress=False, exist_ok=True)
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "s"]  # no temporary folders left
