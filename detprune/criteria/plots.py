"""Pictures of channel scores: saliency over images, score distributions per layer.

Two figures explain a scoring run:

- :func:`plot_saliency_overlays`, one PNG per image: the image with its GT boxes (green,
  ignore regions grey), the box weight map ``M`` of each chosen layer, the layer's saliency
  ``M * |A dU/dA|`` summed over channels, and the same map for the layer's top- and
  bottom-scored channel (what pruning keeps, and what it removes first). Maps are shown at
  their own resolution (nearest-neighbour upsampling), so the cell rasterisation is visible.
- :func:`plot_score_distributions`: one box per layer of its channel scores on a log axis,
  so layers whose channels barely matter stand out; zeros are counted in the labels.

Every file is written atomically. Matplotlib runs on the Agg backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from detprune.criteria.saliency import SaliencyMaps  # noqa: E402
from detprune.utils.atomic import atomic_path  # noqa: E402

OBJECT_COLOUR = (40, 220, 40)
IGNORE_COLOUR = (160, 160, 160)


def pick_layers(names: Sequence[str], count: int = 3) -> list[str]:
    """``count`` layers spread evenly from the first to the last (early, middle, late features)."""
    names = list(names)
    if len(names) <= count:
        return names
    return [names[round(i * (len(names) - 1) / (count - 1))] for i in range(count)] if count > 1 else names[:1]


def image_with_boxes(image: torch.Tensor, boxes: torch.Tensor, ignore: torch.Tensor) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a (3, H, W) [0, 1] image, GT boxes drawn (ignore regions grey)."""
    canvas = np.ascontiguousarray(
        (image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    )
    thickness = max(1, round(min(canvas.shape[:2]) / 200))
    for box, skip in zip(boxes.detach().cpu().tolist(), ignore.detach().cpu().tolist()):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), IGNORE_COLOUR if skip else OBJECT_COLOUR, thickness)
    return canvas


def upsample(values: torch.Tensor, hw: tuple[int, int]) -> np.ndarray:
    """A (h, w) map at an (H, W) image's size, each cell a flat block."""
    array = values.detach().to(torch.float32).cpu().numpy()
    return cv2.resize(array, (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST)


def content_window(batch, b: int, hw: tuple[int, int]) -> tuple[slice, slice]:
    """The rows and columns of input ``b`` that hold the image, not the letterbox padding."""
    if b >= len(batch.samples) or b >= len(batch.letterboxes):
        return slice(0, hw[0]), slice(0, hw[1])
    lb, sample = batch.letterboxes[b], batch.samples[b]
    top, left = int(round(lb.pad_y)), int(round(lb.pad_x))
    height, width = round(sample.height * lb.scale), round(sample.width * lb.scale)
    if height < 1 or width < 1:
        return slice(0, hw[0]), slice(0, hw[1])
    return slice(top, min(hw[0], top + height)), slice(left, min(hw[1], left + width))


def _overlay(ax, background: np.ndarray, heat: np.ndarray | None, title: str) -> None:
    ax.imshow(background)
    if heat is not None:
        top = float(heat.max())
        ax.imshow(np.ma.masked_less_equal(heat, 0), cmap="inferno", alpha=0.6, vmin=0, vmax=top if top > 0 else 1)
    ax.set_title(title, fontsize=7)
    ax.axis("off")


def plot_saliency_overlays(
    maps: SaliencyMaps,
    out_dir: str | Path,
    *,
    scores: Mapping[str, torch.Tensor] | None = None,
    layers: Sequence[str] | None = None,
    max_images: int = 4,
    prefix: str = "saliency",
) -> list[Path]:
    """One PNG per image (up to ``max_images``): rows are layers, columns the maps described above.

    ``scores`` chooses each layer's top and bottom channel (default: this batch's own sums).
    """
    out_dir = Path(out_dir)
    if layers is None:  # spread over the layers this batch's utility reaches
        reached = [name for name, values in maps.channels.items() if bool(values.sum() > 0)]
        layers = pick_layers(reached or list(maps.channels))
    layers = list(layers)
    layers = [name for name in layers if name in maps.channels]
    batch = maps.batch
    written: list[Path] = []
    for b in range(min(max_images, len(batch))):
        picture = image_with_boxes(batch.images[b], batch.boxes[b], batch.ignore[b])
        hw = picture.shape[:2]
        rows, cols = content_window(batch, b, hw)

        def crop(values: np.ndarray) -> np.ndarray:
            return values[rows, cols]  # noqa: B023  (used within the iteration)

        view = crop(picture)
        view_hw = view.shape[:2]
        columns = 5
        fig, axes = plt.subplots(
            max(1, len(layers)),
            columns,
            figsize=(columns * 3.4, max(1, len(layers)) * (3.4 * view_hw[0] / view_hw[1] + 0.4) + 0.2),
            squeeze=False,
        )
        for row, name in enumerate(layers):
            channel_maps = maps.channels[name][b]
            order = (scores[name] if scores is not None and name in scores else maps.channels[name].sum((0, 2, 3)))
            order = torch.as_tensor(order).argsort(descending=True)
            top, bottom = int(order[0]), int(order[-1])
            _overlay(axes[row, 0], view, None, f"{name}\nimage, GT boxes")
            _overlay(
                axes[row, 1],
                view,
                crop(upsample(maps.weights[name][b], hw)),
                f"weight map M {tuple(maps.weights[name].shape[-2:])}",
            )
            _overlay(axes[row, 2], view, crop(upsample(channel_maps.sum(0), hw)), "M |A dU/dA|, all channels")
            _overlay(axes[row, 3], view, crop(upsample(channel_maps[top], hw)), f"top channel {top}")
            _overlay(axes[row, 4], view, crop(upsample(channel_maps[bottom], hw)), f"bottom channel {bottom}")
        fig.tight_layout()
        stem = Path(str(batch.samples[b].image_path)).stem if b < len(batch.samples) else str(b)
        written.append(_save(fig, out_dir / f"{prefix}_{b:02d}_{stem}.png"))
    return written


def plot_score_distributions(
    scores: Mapping[str, torch.Tensor], path: str | Path, *, title: str = "channel scores per layer"
) -> Path:
    """Horizontal box plot per layer, log scale; a layer's zeros are counted in its label."""
    names = list(scores)
    data, labels = [], []
    for name in names:
        values = torch.as_tensor(scores[name]).detach().to(torch.float64).cpu().numpy()
        zeros = int((values <= 0).sum())
        positive = values[values > 0]
        data.append(positive if positive.size else np.array([np.nan]))  # an empty row, labelled
        labels.append(f"{name} ({zeros}/{values.size} zero)" if zeros else name)
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.22 * len(names)))
    ax.boxplot(data, orientation="horizontal", whis=(0, 100), widths=0.6, flierprops={"markersize": 2})
    ax.set_yticks(range(1, len(names) + 1), labels, fontsize=6)
    ax.invert_yaxis()  # first layer on top, in network order
    ax.set_xscale("log")
    ax.set_xlabel("score (log scale; whiskers span min to max)")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", alpha=0.3, which="both")
    fig.tight_layout()
    return _save(fig, Path(path))


def _save(fig, path: Path) -> Path:
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return path
