"""Synthetic driving scenes written as real KITTI files (``image_2/*.png``, ``label_2/*.txt``).

A pinhole camera 1.65 m above a flat road (KITTI's height; focal length scaled from KITTI's
721 px at 1242 px width) sees sky, a horizon, buildings and trees, a road with perspective
lane marks and sidewalks, and cars, pedestrians and cyclists placed in 3D. Each object's box
comes from its real size and depth, so objects shrink toward the horizon and many are small
(under 32x32 px, COCO's "small"). Objects are painted far to near; the share of an object that
nearer objects hide gives its KITTI occlusion level, the share outside the frame its
truncation. Objects too small to see are written as ``DontCare``, as KITTI does.

Every image depends only on ``(seed, index)``: the same seed gives byte-identical files.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from detprune.data.kitti import format_kitti_line
from detprune.data.synthetic_shapes import DRAWERS, Painter, View
from detprune.errors import DetpruneError
from detprune.utils.atomic import atomic_dir
from detprune.utils.progress import progress_bar

CAMERA_HEIGHT = 1.65  # metres, KITTI's camera above the road
KITTI_FOCAL_PER_WIDTH = 721.5 / 1242  # KITTI's focal length per pixel of image width
LANE_WIDTH = 3.5
SIDEWALK_WIDTH = 3.0
SIZES = {  # class: (height, width, length) ranges in metres
    "Car": ((1.4, 1.75), (1.6, 1.9), (3.6, 4.8)),
    "Pedestrian": ((1.55, 1.9), (0.5, 0.7), (0.5, 0.9)),
    "Cyclist": ((1.6, 1.85), (0.5, 0.7), (1.6, 1.9)),
    "Pole": ((4.0, 6.5), (0.15, 0.25), (0.15, 0.25)),
}
COUNTS = {"Car": (2, 9), "Pedestrian": (0, 5), "Cyclist": (0, 3), "Pole": (0, 4)}  # per image, inclusive
MAX_TRUNCATION = 0.6
MAX_HIDDEN = 0.85  # more hidden than this: not labelled, nothing of it is learnable
MAX_LABELLED_DEPTH = 80.0  # metres; farther objects are drawn but marked DontCare, as KITTI's annotators did


@dataclass
class Camera:
    width: int
    height: int
    focal: float
    cx: float
    horizon: float

    def scale(self, z: float) -> float:
        return self.focal / z

    def ground_row(self, z: float) -> float:
        return self.horizon + CAMERA_HEIGHT * self.focal / z


@dataclass
class Road:
    left: float  # X of the road's left edge, metres (camera at X = 0)
    lanes: int

    @property
    def right(self) -> float:
        return self.left + self.lanes * LANE_WIDTH


@dataclass
class Thing:
    """An object in 3D: ``x`` lateral, ``z`` depth of its centre, ``heading`` of travel
    (0 = away from the camera, radians toward +x), dims (h, w, l)."""

    kind: str
    x: float
    z: float
    heading: float
    dims: tuple[float, float, float]

    @property
    def ray(self) -> float:
        return math.atan2(self.x, self.z)

    def view(self) -> View:
        psi = self.heading - self.ray  # yaw relative to the viewing ray
        _, w, l = self.dims
        side = l * abs(math.sin(psi))
        total = w * abs(math.cos(psi)) + side
        front = math.cos(psi) < 0
        return View(side / total, front, (math.sin(psi) < 0) != front)

    def visible_width(self) -> float:
        psi = self.heading - self.ray
        _, w, l = self.dims
        return w * abs(math.cos(psi)) + l * abs(math.sin(psi))

    def box(self, cam: Camera) -> tuple[float, float, float, float]:
        s = cam.scale(self.z)
        u = cam.cx + self.x * s
        half = self.visible_width() * s / 2
        bottom = cam.ground_row(self.z)
        return u - half, bottom - self.dims[0] * s, u + half, bottom


def generate_scenes(
    root: str | Path,
    num_images: int,
    seed: int = 0,
    width: int = 1242,
    height: int = 375,
    progress: bool = True,
    *,
    exist_ok: bool = False,
) -> Path:
    """Write ``num_images`` scenes as a KITTI folder at ``root``; return ``root``.

    The folder appears complete or not at all. An existing ``root`` is an error unless
    ``exist_ok``, and even then only a folder this function wrote is replaced.
    """
    root = Path(root)
    if num_images < 1:
        raise DetpruneError(f"num_images must be at least 1, got {num_images}")
    if width < 64 or height < 32:
        raise DetpruneError(f"image size {width}x{height} is too small for scenes (at least 64x32)")
    if root.exists():
        if not exist_ok:
            raise DetpruneError(f"{root}: already exists; choose another folder or pass exist_ok / --exist-ok")
        if any(root.iterdir()) and not (root / "synthetic.json").is_file():
            raise DetpruneError(f"{root}: exists and is not a synthetic set; refusing to replace it")
    with atomic_dir(root) as tmp:
        (tmp / "image_2").mkdir()
        (tmp / "label_2").mkdir()
        for index in progress_bar(
            range(num_images), total=num_images, desc="synthesising scenes", disable=not progress
        ):
            image, lines = render_scene(seed, index, width, height)
            name = f"{index:06d}"
            if not cv2.imwrite(str(tmp / "image_2" / f"{name}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
                raise DetpruneError(f"{root}: cannot write images there")
            (tmp / "label_2" / f"{name}.txt").write_text("".join(line + "\n" for line in lines))
        meta = {
            "generator": "detprune.data.synthetic",
            "seed": seed,
            "num_images": num_images,
            "width": width,
            "height": height,
        }
        (tmp / "synthetic.json").write_text(json.dumps(meta, indent=2) + "\n")
    return root


def render_scene(seed: int, index: int, width: int, height: int) -> tuple[np.ndarray, list[str]]:
    """One RGB image and its KITTI label lines, determined by ``(seed, index)`` alone."""
    rng = np.random.default_rng([seed, index])
    focal = min(KITTI_FOCAL_PER_WIDTH * width, 1.92 * height)
    cam = Camera(width, height, focal, width * rng.uniform(0.44, 0.56), height * rng.uniform(0.41, 0.48))
    lanes = int(rng.integers(2, 5))
    road = Road(-(int(rng.integers(0, lanes)) + 0.5) * LANE_WIDTH, lanes)

    image = _background(cam, road, rng)
    things = _place_things(cam, road, rng)
    things.sort(key=lambda t: -t.z)  # paint far to near
    owner = np.zeros((height, width), np.int32)  # which object shows at each pixel (0 = none)
    painted = []
    for number, thing in enumerate(things, start=1):
        box = thing.box(cam)
        area, region = _paint(image, owner, number, thing, box, rng)
        painted.append((thing, box, area, region))

    lines = []
    min_height = max(4.0, 0.016 * height)
    for number, (thing, box, area, region) in enumerate(painted, start=1):
        if thing.kind == "Pole" or area == 0:
            continue
        hidden = 1.0 - np.count_nonzero(owner[region] == number) / area
        clipped = _clip(box, width, height)
        if hidden > MAX_HIDDEN:
            continue
        if clipped[3] - clipped[1] < min_height or thing.z > MAX_LABELLED_DEPTH:
            lines.append(format_kitti_line("DontCare", clipped))
            continue
        lines.append(_label_line(thing, box, clipped, hidden))
    return _texture(image, rng), lines


def _clip(box, width: int, height: int) -> tuple[float, float, float, float]:
    """KITTI's convention: boxes clipped to [0, W-1] x [0, H-1]."""
    x1, y1, x2, y2 = box
    return max(x1, 0.0), max(y1, 0.0), min(x2, width - 1.0), min(y2, height - 1.0)


def _label_line(thing: Thing, box, clipped, hidden: float) -> str:
    full = (box[2] - box[0]) * (box[3] - box[1])
    inside = (clipped[2] - clipped[0]) * (clipped[3] - clipped[1])
    truncation = 1.0 - inside / full
    occluded = 0 if hidden < 0.1 else 1 if hidden < 0.5 else 2
    rotation_y = _wrap(thing.heading - math.pi / 2)  # KITTI: -pi/2 is driving away from the camera
    h, w, l = thing.dims
    return format_kitti_line(
        thing.kind, clipped, truncated=truncation, occluded=occluded, alpha=_wrap(rotation_y - thing.ray),
        dimensions=(h, w, l), location=(thing.x, CAMERA_HEIGHT, thing.z), rotation_y=rotation_y,
    )


def _wrap(angle: float) -> float:
    return (angle + math.pi) % (2 * math.pi) - math.pi


def _place_things(cam: Camera, road: Road, rng: np.random.Generator) -> list[Thing]:
    things: list[Thing] = []
    for kind, (low, high) in COUNTS.items():
        for _ in range(int(rng.integers(low, high + 1))):
            for _attempt in range(12):  # resample until it neither collides nor leaves the frame
                thing = _sample_thing(kind, road, rng)
                if _fits(thing, things, cam):
                    things.append(thing)
                    break
    return things


def _sample_thing(kind: str, road: Road, rng: np.random.Generator) -> Thing:
    dims = tuple(float(rng.uniform(*r)) for r in SIZES[kind])
    side = 1 if rng.random() < 0.5 else -1
    edge = road.right if side > 0 else road.left
    if kind == "Car":
        if rng.random() < 0.25:  # parked along the kerb, often cut by the image border
            x = edge - side * rng.uniform(0.9, 1.3)
            z = min(4.0 + rng.exponential(10.0), 35.0)  # many near ones, as in KITTI's streets
            return Thing(kind, float(x), float(z), float(rng.normal(0, 0.05)), dims)
        lane = int(rng.integers(road.lanes))
        x = road.left + (lane + 0.5) * LANE_WIDTH + rng.normal(0, 0.3)
        oncoming = x < -LANE_WIDTH / 2 and road.lanes > 2 and lane == 0
        heading = (math.pi if oncoming else 0.0) + rng.normal(0, 0.08)
        if rng.random() < 0.1:  # crossing at a junction
            heading = math.pi / 2 * (1 if rng.random() < 0.5 else -1)
        return Thing(kind, float(x), float(rng.uniform(5.5, MAX_LABELLED_DEPTH * 1.25)), float(heading), dims)
    if kind == "Pedestrian":
        if rng.random() < 0.15:  # crossing the road
            x = rng.uniform(road.left, road.right)
            heading = math.pi / 2 * side
        else:
            x = edge + side * rng.uniform(0.4, SIDEWALK_WIDTH - 0.3)
            heading = rng.choice([0.0, math.pi]) + rng.normal(0, 0.3)
        return Thing(kind, float(x), float(rng.uniform(4.5, 45.0)), float(heading), dims)
    if kind == "Cyclist":
        x = edge - side * rng.uniform(0.6, 1.4)
        heading = rng.choice([0.0, math.pi]) + rng.normal(0, 0.5)
        if rng.random() < 0.3:
            heading = math.pi / 2 * side + rng.normal(0, 0.3)
        return Thing(kind, float(x), float(rng.uniform(5.0, 50.0)), float(heading), dims)
    x = edge + side * (SIDEWALK_WIDTH - 0.3)  # poles line the outer sidewalk
    return Thing(kind, float(x), float(rng.uniform(7.0, 60.0)), 0.0, dims)


def _fits(thing: Thing, others: list[Thing], cam: Camera) -> bool:
    x1, y1, x2, y2 = thing.box(cam)
    inside = max(0.0, min(x2, cam.width) - max(x1, 0.0)) * max(0.0, min(y2, cam.height) - max(y1, 0.0))
    if inside < (1 - MAX_TRUNCATION) * (x2 - x1) * (y2 - y1):
        return False
    for other in others:  # footprints on the road must not overlap
        reach_x = (thing.visible_width() + other.visible_width()) / 2 + 0.3
        reach_z = (max(thing.dims[2], thing.dims[1]) + max(other.dims[2], other.dims[1])) / 2 + 0.5
        if abs(thing.x - other.x) < reach_x and abs(thing.z - other.z) < reach_z:
            return False
    return True


def _paint(image: np.ndarray, owner: np.ndarray, number: int, thing: Thing, box, rng) -> tuple[int, tuple]:
    """Paint ``thing`` over the image; returns its area in pixels inside the frame and the
    image region that holds it."""
    x1, y1, x2, y2 = box
    ox, oy = math.floor(x1) - 1, math.floor(y1) - 1
    painter = Painter(math.ceil(y2) - oy + 2, math.ceil(x2) - ox + 2)
    DRAWERS[thing.kind](painter, x1 - ox, y1 - oy, x2 - x1, y2 - y1, thing.view(), rng)
    # The part of the local canvas that lies inside the image.
    h, w = owner.shape
    ix1, iy1 = max(ox, 0), max(oy, 0)
    ix2, iy2 = min(ox + painter.mask.shape[1], w), min(oy + painter.mask.shape[0], h)
    if ix2 <= ix1 or iy2 <= iy1:
        return 0, (slice(0, 0), slice(0, 0))
    local = (slice(iy1 - oy, iy2 - oy), slice(ix1 - ox, ix2 - ox))
    alpha = painter.mask[local].astype(np.float32)[..., None] / 255.0
    region = image[iy1:iy2, ix1:ix2]
    if thing.kind != "Pole":  # a contact shadow on the road under the object
        shade = np.zeros(alpha.shape[:2], np.float32)
        bottom = y2 - oy - (iy1 - oy)
        cv2.ellipse(
            shade,
            (int((x1 + x2) / 2 - ix1), int(bottom)),
            (max(1, int((x2 - x1) * 0.55)), max(1, int((y2 - y1) * 0.06))),
            0,
            0,
            360,
            0.45,
            -1,
        )
        region[:] = region * (1.0 - shade[..., None])
    region[:] = np.clip(painter.canvas[local] + region * (1.0 - alpha), 0, 255)  # canvas is premultiplied by alpha
    covers = painter.mask[local] > 127
    owner[iy1:iy2, ix1:ix2][covers] = number if thing.kind != "Pole" else 0
    return int(np.count_nonzero(covers)), (slice(iy1, iy2), slice(ix1, ix2))


def _background(cam: Camera, road: Road, rng: np.random.Generator) -> np.ndarray:
    """Sky, buildings and trees above the horizon; road, lane marks, sidewalks and verge below."""
    h, w = cam.height, cam.width
    horizon = int(round(cam.horizon))
    image = np.empty((h, w, 3), np.float32)
    top = np.array(rng.choice([(90, 140, 210), (150, 160, 175), (120, 170, 230)]), np.float32)
    low = np.array((215, 220, 228), np.float32)
    t = np.linspace(0, 1, horizon, dtype=np.float32)[:, None, None]
    image[:horizon] = top * (1 - t) + low * t

    # Buildings and trees: far away, so their base sits on the horizon.
    for _ in range(int(rng.integers(6, 16))):
        bx = rng.uniform(-0.1, 1.0) * w
        bw, bh = rng.uniform(0.04, 0.14) * w, rng.uniform(0.08, 0.35) * h
        if abs(bx + bw / 2 - cam.cx) < 0.12 * w:
            continue  # keep the road's vanishing point open
        colour = rng.uniform(90, 200, 3) * np.array([1.0, 0.95, 0.9])
        y0 = max(0, int(horizon - bh))
        image[y0:horizon + 1, max(0, int(bx)):max(0, int(bx + bw))] = colour
    for _ in range(int(rng.integers(2, 8))):
        tx = int(rng.uniform(0, w))
        r = int(rng.uniform(0.02, 0.06) * h) + 1
        cv2.circle(image, (tx, horizon - r), r, tuple(float(c) for c in rng.uniform([30, 80, 30], [80, 140, 70])), -1)

    # Ground: for each pixel below the horizon, its point on the road plane picks the material.
    rows = np.arange(horizon, h, dtype=np.float32)
    z = (CAMERA_HEIGHT * cam.focal / (rows - cam.horizon + 0.5).clip(0.5))[:, None]
    x = (np.arange(w, dtype=np.float32)[None, :] - cam.cx) * (z / cam.focal)
    palette = np.array(
        [rng.uniform([70, 100, 50], [120, 150, 90]),  # verge
         rng.uniform(150, 185) * np.array([1.0, 0.97, 0.92]),  # sidewalk
         [rng.uniform(80, 115)] * 3,  # asphalt
         [230, 230, 230]],  # paint
        np.float32,
    )
    material = ((x > road.left - SIDEWALK_WIDTH) & (x < road.right + SIDEWALK_WIDTH)).view(np.uint8)
    material += (x >= road.left) & (x <= road.right)
    mark = (np.abs(x - (road.left + 0.2)) < 0.08) | (np.abs(x - (road.right - 0.2)) < 0.08)
    dash = (z % 12.0) < 4.0
    for k in range(1, road.lanes):
        mark |= (np.abs(x - (road.left + k * LANE_WIDTH)) < 0.08) & dash
    material[mark] = 3
    image[horizon:] = palette[material]
    return image


def _texture(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lighting, low-frequency blotches and sensor noise; returns uint8 RGB."""
    h, w = image.shape[:2]
    small = rng.normal(0, 7, (h // 12 + 2, w // 12 + 2)).astype(np.float32)
    noise = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    noise += rng.integers(-4, 5, (h, w), dtype=np.int8)
    image *= np.float32(rng.uniform(0.8, 1.15))
    image += noise[..., None]
    np.clip(image, 0, 255, out=image)
    return image.astype(np.uint8)
