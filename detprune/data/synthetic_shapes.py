"""Drawings of the synthetic scene's objects: cars, pedestrians, cyclists and street props.

Each drawing paints into a small canvas the size of the object's box and marks the pixels it
covers in a mask, so the scene can composite objects far-to-near and measure how much of each
one nearer objects hide. Coordinates are sub-pixel (OpenCV's ``shift``) because many objects
are only a few pixels tall. The classes differ in silhouette, not only in colour -- cars are
wide boxes on wheels with windows, pedestrians tall and thin with a head and two legs that
reach the ground, cyclists a figure above one or two wheels -- so a detector can learn them.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

SHIFT = 4  # sub-pixel bits for OpenCV drawing
ONE = 1 << SHIFT

Colour = tuple[int, int, int]

CAR_PAINTS: tuple[Colour, ...] = (
    (235, 235, 232), (190, 192, 195), (40, 40, 44), (170, 30, 30), (30, 60, 150),
    (70, 75, 80), (30, 90, 50), (210, 170, 40), (120, 20, 30), (100, 130, 170),
)
SKIN: tuple[Colour, ...] = ((235, 195, 160), (200, 150, 110), (150, 100, 70), (95, 65, 45))
CLOTHES: tuple[Colour, ...] = (
    (200, 40, 40), (40, 80, 170), (240, 240, 235), (30, 30, 30), (90, 140, 60), (230, 180, 40), (120, 60, 140),
)
TROUSERS: tuple[Colour, ...] = ((35, 40, 60), (60, 60, 60), (30, 50, 110), (150, 130, 100), (20, 20, 20))
BIKE_FRAMES: tuple[Colour, ...] = ((220, 30, 30), (30, 30, 30), (40, 120, 200), (240, 240, 240), (250, 200, 0))


def jitter(rng: np.random.Generator, colour: Colour, amount: int = 18) -> Colour:
    shift = rng.integers(-amount, amount + 1, 3).tolist()
    return tuple(min(255, max(0, c + d)) for c, d in zip(colour, shift))


def pick(rng: np.random.Generator, palette: tuple[Colour, ...]) -> Colour:
    return palette[int(rng.integers(len(palette)))]


class Painter:
    """Paints the same shape into an RGB canvas and a coverage mask, in sub-pixel coordinates."""

    def __init__(self, height: int, width: int) -> None:
        self.canvas = np.zeros((height, width, 3), np.uint8)
        self.mask = np.zeros((height, width), np.uint8)

    @staticmethod
    def _pts(points) -> np.ndarray:
        return np.round(np.asarray(points, np.float64) * ONE).astype(np.int32).reshape(-1, 1, 2)

    def poly(self, points, colour: Colour) -> None:
        pts = self._pts(points)
        cv2.fillPoly(self.canvas, [pts], colour, cv2.LINE_AA, SHIFT)
        cv2.fillPoly(self.mask, [pts], 255, cv2.LINE_AA, SHIFT)

    def rect(self, x1: float, y1: float, x2: float, y2: float, colour: Colour) -> None:
        self.poly([(x1, y1), (x2, y1), (x2, y2), (x1, y2)], colour)

    def segment(self, p, q, width: float, colour: Colour) -> None:
        """A thick line as a polygon, so its width stays sub-pixel accurate."""
        p, q = np.asarray(p, float), np.asarray(q, float)
        d = q - p
        n = np.array([-d[1], d[0]]) / max(np.hypot(*d), 1e-6) * max(width, 0.6) / 2
        self.poly([p + n, q + n, q - n, p - n], colour)

    def ellipse(self, centre, axes, colour: Colour, thickness: int = -1) -> None:
        c = tuple(int(round(v * ONE)) for v in centre)
        a = tuple(max(1, int(round(v * ONE))) for v in axes)
        cv2.ellipse(self.canvas, c, a, 0, 0, 360, colour, thickness, cv2.LINE_AA, SHIFT)
        cv2.ellipse(self.mask, c, a, 0, 0, 360, 255, thickness, cv2.LINE_AA, SHIFT)


@dataclass
class View:
    """How an object faces the camera: ``side`` is the share of the box its side takes (0 = rear
    or front only, 1 = side only), ``front`` whether the front rather than the rear is seen,
    ``side_left`` whether the side face lies on the left of the box."""

    side: float
    front: bool
    side_left: bool


def draw_car(p: Painter, x: float, y: float, w: float, h: float, view: View, rng: np.random.Generator) -> None:
    paint = jitter(rng, pick(rng, CAR_PAINTS))
    dark = tuple(int(c * 0.6) for c in paint)
    glass = jitter(rng, (55, 70, 90), 12)
    tyre = (25, 25, 25)
    sw = w * view.side
    fw = w - sw  # width of the rear / front face
    fx = x + sw if view.side_left else x
    sx = x if view.side_left else x + fw
    if sw > 0.5:  # side face: long body, cabin with windows, two round wheels
        front_left = view.side_left != view.front  # which end of the side the bonnet is at

        def at(t: float) -> float:  # t runs along the side from the rear (0) to the front (1)
            return sx + (1.0 - t) * sw if front_left else sx + t * sw

        r = min(0.2 * h, 0.16 * sw)
        p.rect(sx, y + 0.42 * h, sx + sw, y + h - 0.55 * r, paint)
        p.poly(
            [(at(0.04), y + 0.42 * h), (at(0.1), y + 0.05 * h), (at(0.52), y + 0.05 * h), (at(0.7), y + 0.42 * h)], dark
        )
        p.poly(
            [(at(0.1), y + 0.38 * h), (at(0.14), y + 0.1 * h), (at(0.5), y + 0.1 * h), (at(0.64), y + 0.38 * h)], glass
        )
        for t in (0.18, 0.82):
            p.ellipse((at(t), y + h - r), (r, r), tyre)
            p.ellipse((at(t), y + h - r), (0.45 * r, 0.45 * r), (150, 150, 150))
    if fw > 0.5:  # rear or front face: body, cabin, window, lights, two dark wheel blocks
        p.rect(fx + 0.04 * fw, y + 0.72 * h, fx + 0.22 * fw, y + h, tyre)
        p.rect(fx + 0.78 * fw, y + 0.72 * h, fx + 0.96 * fw, y + h, tyre)
        p.rect(fx, y + 0.4 * h, fx + fw, y + 0.85 * h, paint)
        p.poly([(fx + 0.06 * fw, y + 0.42 * h), (fx + 0.18 * fw, y + 0.04 * h), (fx + 0.82 * fw, y + 0.04 * h),
                (fx + 0.94 * fw, y + 0.42 * h)], dark)
        p.poly([(fx + 0.14 * fw, y + 0.38 * h), (fx + 0.22 * fw, y + 0.1 * h), (fx + 0.78 * fw, y + 0.1 * h),
                (fx + 0.86 * fw, y + 0.38 * h)], glass)
        light = (250, 240, 200) if view.front else (220, 20, 20)
        p.rect(fx + 0.03 * fw, y + 0.48 * h, fx + 0.2 * fw, y + 0.58 * h, light)
        p.rect(fx + 0.8 * fw, y + 0.48 * h, fx + 0.97 * fw, y + 0.58 * h, light)
        p.rect(
            fx + 0.38 * fw,
            y + 0.63 * h,
            fx + 0.62 * fw,
            y + 0.73 * h,
            (235, 235, 225) if not view.front else (30, 30, 30),
        )


def _figure(p: Painter, cx: float, top: float, h: float, lean: float, rng: np.random.Generator,
            shoulders: float) -> tuple[Colour, np.ndarray]:
    """Head and torso of a person ``h`` tall (whole body) from ``top``; returns the shirt colour
    and the hip point. ``lean`` shifts the shoulders forward (cyclists)."""
    skin, shirt = jitter(rng, pick(rng, SKIN), 10), jitter(rng, pick(rng, CLOTHES))
    head_r = 0.065 * h
    hip = np.array([cx, top + 0.52 * h])
    neck = np.array([cx + lean, top + 0.15 * h])
    half = shoulders / 2
    p.poly([neck + (-half, 0), neck + (half, 0), hip + (0.35 * half, 0), hip - (0.35 * half, 0)], shirt)
    p.ellipse((neck[0] + 0.3 * lean, top + head_r * 1.05), (head_r * 0.85, head_r), skin)
    p.ellipse((neck[0] + 0.3 * lean, top + head_r * 0.7), (head_r * 0.85, head_r * 0.6), jitter(rng, (40, 30, 25), 15))
    return shirt, hip


def draw_pedestrian(p: Painter, x: float, y: float, w: float, h: float, view: View, rng: np.random.Generator) -> None:
    cx = x + w / 2
    shoulders = min(0.55 * w, 0.26 * h)
    shirt, hip = _figure(p, cx, y, h, 0.0, rng, shoulders)
    trousers = jitter(rng, pick(rng, TROUSERS))
    stride = (0.18 * w + 0.1 * h * view.side) * rng.uniform(0.3, 1.0)
    limb = max(0.09 * h, 0.7)
    for sign in (-1, 1):
        p.segment(hip + (sign * 0.12 * shoulders, 0), (cx + sign * stride, y + h - limb / 2), limb, trousers)
        p.segment((cx + sign * shoulders * 0.5, y + 0.17 * h), (cx + sign * (shoulders * 0.5 + 0.12 * w), y + 0.48 * h),
                  0.7 * limb, shirt)


def draw_cyclist(p: Painter, x: float, y: float, w: float, h: float, view: View, rng: np.random.Generator) -> None:
    frame = jitter(rng, pick(rng, BIKE_FRAMES))
    tyre = (20, 20, 20)
    r = 0.2 * h  # wheel radius: 0.35 m of a 1.75 m high rider on a bike
    ground = y + h
    if view.side > 0.3:
        rx = min(r, w * 0.25)
        forward = -1 if view.side_left != view.front else 1  # direction of travel in the image
        back_c = np.array([x + w / 2 - forward * (w / 2 - rx), ground - r])
        front_c = np.array([x + w / 2 + forward * (w / 2 - rx), ground - r])
        ring = max(1, int(round(0.18 * r)))
        for c in (back_c, front_c):
            p.ellipse(c, (rx, r), tyre, ring)
        seat = np.array([x + w / 2 - forward * 0.12 * w, y + 0.5 * h])
        bar = front_c + (-forward * 0.1 * w, -1.25 * r)
        crank = np.array([x + w / 2, ground - r])
        bar_w = max(0.03 * h, 0.6)
        for a, b in ((back_c, crank), (crank, seat), (seat, back_c), (crank, bar), (seat, bar), (bar, front_c)):
            p.segment(a, b, bar_w, frame)
        shirt, hip = _figure(p, seat[0], y, h, forward * 0.12 * w, rng, min(0.2 * h, 0.3 * w))
        leg = jitter(rng, pick(rng, TROUSERS))
        p.segment(hip, crank + (forward * 0.05 * w, 0), 0.08 * h, leg)
        p.segment((hip[0] + forward * 0.12 * w, y + 0.2 * h), bar, 0.06 * h, shirt)
        return
    # Seen from behind or ahead: one narrow wheel under a rider, a handlebar across.
    cx = x + w / 2
    p.ellipse((cx, ground - r), (max(0.09 * w, 0.6), r), tyre)
    p.segment((x + 0.1 * w, y + 0.47 * h), (x + 0.9 * w, y + 0.47 * h), max(0.035 * h, 0.6), frame)
    shirt, hip = _figure(p, cx, y, h, 0.0, rng, 0.7 * w)
    leg = jitter(rng, pick(rng, TROUSERS))
    for sign in (-1, 1):
        p.segment(hip + (sign * 0.12 * w, 0), (cx + sign * 0.2 * w, ground - 0.3 * r), 0.08 * h, leg)
        p.segment((cx + sign * 0.3 * w, y + 0.18 * h), (x + (0.5 + sign * 0.38) * w, y + 0.47 * h), 0.05 * h, shirt)


def draw_pole(p: Painter, x: float, y: float, w: float, h: float, view: View, rng: np.random.Generator) -> None:
    """A street lamp or sign post: a thin grey pole with a head."""
    grey = jitter(rng, (120, 120, 125), 20)
    p.rect(x + 0.35 * w, y + 0.05 * h, x + 0.65 * w, y + h, grey)
    if rng.random() < 0.5:
        p.ellipse((x + w / 2, y + 0.06 * h), (w * 1.2, 0.06 * h), jitter(rng, (200, 40, 40), 30))
    else:
        p.rect(x - 0.5 * w, y, x + 1.5 * w, y + 0.04 * h, grey)


DRAWERS = {"Car": draw_car, "Pedestrian": draw_pedestrian, "Cyclist": draw_cyclist, "Pole": draw_pole}
