"""One policy for bad input shared by every reader: fail with the file and line, or skip and count.

By default the first problem raises :class:`~detprune.errors.BadInputError` naming the file
(and line) and what is wrong, because a silently dropped box is a silently wrong metric.
With ``skip_bad=True`` each problem becomes a logged warning, the offending line or image is
left out, and a summary says how many of each kind were skipped.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from pathlib import Path

from detprune.errors import BadInputError

LOG = logging.getLogger("detprune.data")

# The kinds of problem a reader reports; the summary counts per kind.
MALFORMED_LINE = "malformed line"
DEGENERATE_BOX = "degenerate box"
OUT_OF_IMAGE_BOX = "out-of-image box"
LABEL_WITHOUT_IMAGE = "label without image"
IMAGE_WITHOUT_LABEL = "image without label"
UNKNOWN_CLASS = "unknown class"
UNREADABLE_IMAGE = "unreadable image"
UNREADABLE_LABEL = "unreadable label file"

# KITTI clips boxes to [0, W-1] x [0, H-1] and writes two decimals; a pixel of slack keeps
# valid annotations of slightly smaller frames (KITTI has 1224x370 ones) from being rejected.
BORDER_TOLERANCE_PX = 1.0


def where(path: str | Path, line: int | None = None) -> str:
    """``label_2/000003.txt:4`` -- the prefix every bad-input message starts with."""
    return f"{path}:{line}" if line is not None else str(path)


class BadInputs:
    """Collects the problems of one read: raises on the first, or logs and counts them."""

    def __init__(self, source: str | Path, skip_bad: bool = False) -> None:
        self.source = str(source)
        self.skip_bad = skip_bad
        self.counts: Counter[str] = Counter()

    def report(self, kind: str, message: str) -> None:
        """Raise ``BadInputError(message)``, or (``skip_bad``) log it and count ``kind``."""
        if not self.skip_bad:
            hint = "" if "--skip-bad" in message else " (fix it, or pass skip_bad / --skip-bad to leave it out)"
            raise BadInputError(message + hint)
        self.counts[kind] += 1
        LOG.warning("skipped: %s", message)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        """``skipped 3 bad inputs in DIR: 2 malformed line, 1 unknown class`` (empty if none)."""
        if not self.counts:
            return ""
        parts = ", ".join(f"{n} {kind}" for kind, n in sorted(self.counts.items()))
        return f"skipped {self.total} bad input(s) in {self.source}: {parts}"

    def log_summary(self) -> dict[str, int]:
        text = self.summary()
        if text:
            LOG.warning(text)
        return dict(self.counts)


def check_box(
    problems: BadInputs,
    place: str,
    box: tuple[float, float, float, float],
    width: int,
    height: int,
) -> bool:
    """True if the xyxy ``box`` is finite, has positive extent and lies in the image."""
    x1, y1, x2, y2 = box
    if not all(math.isfinite(v) for v in box):
        problems.report(MALFORMED_LINE, f"{place}: box {_fmt(box)} has a non-finite coordinate")
        return False
    if x2 <= x1 or y2 <= y1:
        axis = "x2 <= x1" if x2 <= x1 else "y2 <= y1"
        problems.report(DEGENERATE_BOX, f"{place}: degenerate box {_fmt(box)} ({axis})")
        return False
    tol = BORDER_TOLERANCE_PX
    if x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol:
        problems.report(
            OUT_OF_IMAGE_BOX, f"{place}: box {_fmt(box)} lies outside the {width}x{height} image"
        )
        return False
    return True


def _fmt(box) -> str:
    return "(" + ", ".join(f"{v:g}" for v in box) + ")"


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the image header, without decoding pixels; None if unreadable."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:  # Pillow ships with matplotlib; decode fully only as a fallback
        import cv2

        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        return None if image is None else (int(image.shape[1]), int(image.shape[0]))
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, UnidentifiedImageError, ValueError, ImportError):
        # ImportError: where ultralytics is loaded it patches Image.open to retry unknown files
        # with an optional HEIF plugin, which may be absent; the file is unreadable either way.
        return None
    return (int(width), int(height)) if width > 0 and height > 0 else None


def read_label_text(path: Path, problems: "BadInputs") -> str | None:
    """A label file's text; a binary or undecodable file is reported to ``problems`` (None then)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        problems.report(UNREADABLE_LABEL, f"{path}: not a text label file (binary or not UTF-8)")
        return None
    except OSError as err:
        problems.report(UNREADABLE_LABEL, f"{path}: cannot read label file ({err.strerror or type(err).__name__})")
        return None
    if "\x00" in text:  # NUL bytes decode as UTF-8 but no label file holds them
        problems.report(UNREADABLE_LABEL, f"{path}: not a text label file (holds NUL bytes)")
        return None
    return text


def readable_size(path: Path, problems: "BadInputs") -> tuple[int, int] | None:
    """:func:`image_size`, reporting an unreadable image to ``problems`` (None then)."""
    size = image_size(path)
    if size is None:
        problems.report(UNREADABLE_IMAGE, f"{path}: cannot read image (empty, truncated or not an image)")
    return size
