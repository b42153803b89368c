"""CATRO: keep the channel subset whose features best separate the classes.

Source: W. Hu, Z. Che, N. Liu, M. Li, J. Tang, C. Zhang and J. Wang, "CATRO: Channel
Pruning via Class-Aware Trace Ratio Optimization", IEEE Transactions on Neural Networks
and Learning Systems, 2023, arXiv:2110.10921. The paper prunes classifiers and publishes
no code; the adaptation to detectors below is detprune's.

Channels are judged jointly: for a layer with per-channel features, CATRO keeps the subset
``K`` of the required size that maximises the trace ratio

    J(K) = tr(S_b restricted to K) / tr(S_w restricted to K)

of between-class to within-class scatter, from a few labelled samples per class and no
training. It is solved by the classic iterative trace-ratio scheme: fix ``lambda`` (the
current ratio), take the subset maximising ``tr(S_b - lambda S_w)`` on it, set ``lambda`` to
that subset's ratio, repeat until ``lambda`` stops rising (it never falls: Dinkelbach's
argument).

Detection adaptation: one sample per ground-truth box. For every prunable layer the box is
RoI-aligned (``torchvision.ops.roi_align``, ``k x k`` bins, default 3) on the layer's
activation, the box scaled by the activation's stride; channel ``c``'s feature is its own
``k*k`` values. Background is an extra class: boxes drawn (seeded) where they overlap no
box of the image, ignore regions included. With the features of different channels in
different coordinates, the traces are sums over channels::

    b_c = sum_j n_j ||mu_jc - mu_c||^2          (channel c's share of tr(S_b))
    w_c = sum_j sum_{i in j} ||x_ic - mu_jc||^2 (channel c's share of tr(S_w))

so for a fixed ``lambda`` the best subset is exactly the top ``k`` of ``b_c - lambda w_c``
(the greedy selection the paper justifies by submodularity is exact here). Only per-class
counts, sums (``C x k^2``) and sums of squares (``C``) are accumulated: memory is
``O(classes x channels x k^2)`` whatever the number of samples.

Regularised ratio (``ridge``, detprune's detection adaptation): ``J_rho(K) = tr(S_b|K) /
(tr(S_w|K) + rho |K| mean_c w_c)``. At ``rho = 0`` (the paper's ratio) the subset prefers channels
with little within-class scatter (on kitti_tiny half of a layer keeps 41% of it, less than a
random half), the variation a detector reads to place and size boxes, and the cut keeps no more
of the detector than random channels do (``docs/benchmarks.md``, "Criteria under equal widths").
A ridge charges every kept channel the same within-class scatter, so the choice leans to
between-class scatter; ``rho = inf`` keeps the ``k`` channels of largest ``b_c`` (the limit,
``J`` then ``0``). The default, ``inf``, is what measured best; ``ridge=0`` is the paper's
criterion.

``class_weights`` (``{class name: weight > 0}``) counts each sample of a class as that many
samples: ``n_j``, the class sums and sums of squares are scaled by the class's weight (the
overall mean becomes the weighted mean), so separating a weighted class from the others
weighs more in both traces; background weighs 1.

Outputs: :meth:`CATRO.score` gives channel ``c`` the marginal gain ``b_c - lambda* w_c`` at
the converged ``lambda*`` for the layer's ``keep_fraction`` (for the pruner's global
allocation); :meth:`CATRO.kept_sets` gives each layer's chosen subset for
``prune_model(kept=...)``. Activations without image geometry (per-RoI heads) are not
scored (left out of the result, so the pruner keeps them whole) and are listed in
``last_stats.unscored_layers``. One forward pass per batch, without gradients; batches
stop being read once every class seen has ``samples_per_class`` samples.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np
import torch
from torch import nn
from torchvision.ops import roi_align

from detprune.adapters.base import DetectorAdapter
from detprune.criteria.base import ChannelScores, Criterion, register_criterion
from detprune.criteria.class_weights import check_class_weights, model_weight_table
from detprune.criteria.hooks import model_device, scoring_state
from detprune.data.batch import Batch
from detprune.errors import DetpruneError
from detprune.utils.progress import progress_bar

BACKGROUND = -1  # the class id of background samples


@dataclass
class TraceRatioSolution:
    """The chosen subset, the converged ratio and every ``lambda`` on the way (non-decreasing)."""

    kept: np.ndarray  # sorted channel indices
    ratio: float
    history: list[float]


def solve_trace_ratio(between: np.ndarray, within: np.ndarray, keep: int, ridge: float = 0.0, max_iter: int = 100,
                      tol: float = 1e-12) -> TraceRatioSolution:
    """The subset of ``keep`` channels maximising ``sum(between) / sum(within + ridge * mean(within))``.

    ``between[c]``, ``within[c]``: channel ``c``'s shares of the two traces (non-negative).
    Iterative trace ratio: ``lambda_0 = 0``; select the top ``keep`` of ``b - lambda w``
    (ties: lower index), ``lambda`` = the selection's ratio; stop when it rises by ``tol`` or
    less (relative). A subset with no within-class scatter has ratio ``inf`` (it separates
    perfectly) unless it has no between-class scatter either (ratio 0). ``ridge = inf``: the
    top ``keep`` of ``b``, ratio 0 (the limit).
    """
    b = np.asarray(between, dtype=np.float64)
    w = np.asarray(within, dtype=np.float64)
    if b.shape != w.shape or b.ndim != 1:
        raise DetpruneError("trace ratio: between and within must be 1-D arrays of one length")
    if not 1 <= keep <= len(b):
        raise DetpruneError(f"trace ratio: keep must be in 1..{len(b)}, got {keep}")
    if not ridge >= 0.0:
        raise DetpruneError(f"trace ratio: ridge must be >= 0, got {ridge}")
    if math.isinf(ridge):
        return TraceRatioSolution(np.sort(_top(b, keep)), 0.0, [0.0])
    w = _charged(w, ridge)
    lam = 0.0
    history = [lam]
    chosen = _top(b, keep)
    for _ in range(max_iter):
        new = _ratio(b[chosen], w[chosen])
        if not new > lam * (1 + tol) + tol:  # also stops on inf (nothing can beat a perfect split)
            lam = max(lam, new)
            break
        lam = new
        history.append(lam)
        if math.isinf(lam):
            break
        candidate = _top(b - lam * w, keep)
        if _ratio(b[candidate], w[candidate]) <= lam:
            break  # the current subset already maximises b - lam w: converged
        chosen = candidate
    if history[-1] != lam:
        history.append(lam)
    return TraceRatioSolution(np.sort(chosen), lam, history)


def _charged(within: np.ndarray, ridge: float) -> np.ndarray:
    """Within-class shares plus the ridge's equal charge per channel (finite ``ridge``)."""
    return within + ridge * float(within.mean()) if ridge > 0.0 else within


def _top(values: np.ndarray, keep: int) -> np.ndarray:
    order = np.lexsort((np.arange(len(values)), -values))  # descending, ties to the lower index
    return order[:keep]


def _ratio(b: np.ndarray, w: np.ndarray) -> float:
    sb, sw = float(b.sum()), float(w.sum())
    if sw <= 0.0:
        return math.inf if sb > 0.0 else 0.0
    return sb / sw


def marginal_gains(between: np.ndarray, within: np.ndarray, ratio: float, ridge: float = 0.0) -> np.ndarray:
    """``b_c - lambda (w_c + ridge mean(w))``; at ``lambda = inf`` the channels that separate
    perfectly (w = 0, b > 0) rank first, by ``b``, then the others by ``-w`` (finite scores, so
    the pruner can use them); at ``ridge = inf``, ``b_c``."""
    b = np.asarray(between, dtype=np.float64)
    w = np.asarray(within, dtype=np.float64)
    if math.isinf(ridge):
        return b.copy()
    w = _charged(w, ridge)
    if math.isfinite(ratio):
        return b - ratio * w
    perfect = (w <= 0) & (b > 0)
    top = float(w.max()) if len(w) else 0.0
    return np.where(perfect, b + 1.0, -w / (top + 1.0))


class ClassStatistics:
    """Per class: sample count, per-channel feature sum (C x k^2) and sum of squared norms (C)."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.sums: dict[int, torch.Tensor] = {}
        self.squares: dict[int, torch.Tensor] = {}

    def add(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """``features``: (N, C, k, k) RoI features; ``labels``: (N,) class ids (BACKGROUND included)."""
        flat = features.detach().to(torch.float64).flatten(2)  # N, C, k^2
        for cls in labels.unique().tolist():
            rows = flat[labels == cls]
            self.counts[cls] = self.counts.get(cls, 0) + len(rows)
            total, squares = rows.sum(0).cpu(), rows.pow(2).sum((0, 2)).cpu()
            self.sums[cls] = total if cls not in self.sums else self.sums[cls] + total
            self.squares[cls] = squares if cls not in self.squares else self.squares[cls] + squares

    def scatter(self, weights: Mapping[int, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(b, w): each channel's share of tr(S_b) and tr(S_w); ``weights`` {class id: weight}
        count a class's samples that many times (absent ids weigh 1)."""
        classes = sorted(self.counts)
        scale = {j: float((weights or {}).get(j, 1.0)) for j in classes}
        n = torch.tensor([self.counts[j] * scale[j] for j in classes], dtype=torch.float64)
        sums = torch.stack([self.sums[j] * scale[j] for j in classes])  # x 1.0 is exact: unweighted stays bit-identical
        squares = torch.stack([self.squares[j] * scale[j] for j in classes])
        means = torch.stack([self.sums[j] / self.counts[j] for j in classes])  # J, C, k^2
        overall = sums.sum(0) / n.sum()
        between = (n[:, None] * (means - overall).pow(2).sum(2)).sum(0)
        within = squares.sum(0) - (n[:, None] * means.pow(2).sum(2)).sum(0)
        return between.numpy(), within.clamp_min(0.0).numpy()  # clamp: rounding of sums of squares


@dataclass
class CatroStats:
    """What a CATRO pass cost and saw."""

    images: int = 0
    batches: int = 0
    forward_passes: int = 0
    seconds: float = 0.0
    samples_per_class: dict[str, int] = field(default_factory=dict)
    unscored_layers: list[str] = field(default_factory=list)
    ratios: dict[str, float] = field(default_factory=dict)  # converged lambda per layer
    iterations: dict[str, int] = field(default_factory=dict)

    @property
    def scored(self) -> int:
        return self.images

    def as_dict(self) -> dict:
        return {
            "images": self.images,
            "scored": self.images,
            "skipped_without_boxes": 0,
            "batches": self.batches,
            "forward_passes": self.forward_passes,
            "seconds": round(self.seconds, 3),
            "samples_per_class": dict(self.samples_per_class),
            "unscored_layers": list(self.unscored_layers),
            "ratios": {k: (v if math.isfinite(v) else "inf") for k, v in self.ratios.items()},
            "iterations": dict(self.iterations),
        }


def background_boxes(
    boxes: torch.Tensor, image_hw: tuple[int, int], count: int, rng: np.random.Generator, tries: int = 50
) -> torch.Tensor:
    """Up to ``count`` boxes overlapping none of ``boxes``, sized like them (or 1/8-1/3 of the image)."""
    h, w = image_hw
    if len(boxes):
        sizes = (boxes[:, 2:] - boxes[:, :2]).clamp_min(2.0).numpy()
    else:
        sizes = np.array([[w / 6, h / 6]], dtype=np.float32)
    found: list[list[float]] = []
    for _ in range(tries):
        if len(found) >= count:
            break
        bw, bh = sizes[rng.integers(len(sizes))]
        bw, bh = min(float(bw), w - 1.0), min(float(bh), h - 1.0)
        x0, y0 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        cand = torch.tensor([[x0, y0, x0 + bw, y0 + bh]], dtype=torch.float32)
        others = torch.cat([boxes.float(), torch.tensor(found, dtype=torch.float32).reshape(-1, 4)])
        if not len(others) or not bool((_intersection(cand, others) > 0).any()):
            found.append(cand[0].tolist())
    return torch.tensor(found, dtype=torch.float32).reshape(-1, 4)


def _intersection(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    return (rb - lt).clamp_min(0).prod(2)


@register_criterion
class CATRO(Criterion):
    """Class-aware trace ratio channel selection (Hu et al., IEEE TNNLS 2023); see the module docstring."""

    name = "catro"
    needs_data = True
    joint_subsets = True  # removed_positions: the trace-ratio subset of a given width

    def __init__(
        self,
        samples_per_class: int = 20,
        roi_size: int = 3,
        keep_fraction: float = 0.5,
        background: bool = True,
        ridge: float = math.inf,
        class_weights: Mapping[str, float] | None = None,
        seed: int | None = 0,
        progress: bool = True,
    ) -> None:
        self.class_weights = check_class_weights(class_weights)
        if samples_per_class < 2 or roi_size < 1 or not 0.0 < keep_fraction <= 1.0:
            raise DetpruneError("catro: samples_per_class >= 2, roi_size >= 1 and 0 < keep_fraction <= 1")
        ridge = float(ridge)
        if not ridge >= 0.0:
            raise DetpruneError(
                f"catro: ridge must be >= 0 (0 = the paper's ratio, inf = between-class scatter), got {ridge}"
            )
        self.ridge = ridge
        self.samples_per_class = samples_per_class
        self.roi_size = roi_size
        self.keep_fraction = keep_fraction
        self.background = background
        self.seed = seed
        self.progress = progress
        self.last_stats = CatroStats()
        self.last_solutions: dict[str, TraceRatioSolution] = {}
        self.last_scatter: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def options(self) -> dict:
        return {"samples_per_class": self.samples_per_class, "roi_size": self.roi_size,
                "keep_fraction": self.keep_fraction, "background": self.background,
                "ridge": self.ridge if math.isfinite(self.ridge) else "inf",
                **({"class_weights": dict(self.class_weights)} if self.class_weights else {}), "seed": self.seed}

    # --- the two outputs ---------------------------------------------------------------------
    def score(self, adapter: DetectorAdapter, model: nn.Module, batches: Iterable[Batch]) -> ChannelScores:
        """Per channel ``b_c - lambda* w_c`` at the converged ratio for ``keep_fraction`` of the layer."""
        scatter = self.statistics(adapter, model, batches)
        self.last_scatter = scatter
        scores = {}
        for name, (b, w) in scatter.items():
            solution = self._solve(name, b, w, self.keep_fraction)
            scores[name] = torch.from_numpy(marginal_gains(b, w, solution.ratio, self.ridge))
        return scores

    def kept_sets(
        self, adapter: DetectorAdapter, model: nn.Module, batches: Iterable[Batch], keep_fraction: float | None = None
    ) -> dict[str, list[int]]:
        """{layer: the channels CATRO keeps}, ``round(keep_fraction * C)`` of them (at least 1)."""
        fraction = self.keep_fraction if keep_fraction is None else keep_fraction
        if not 0.0 < fraction <= 1.0:
            raise DetpruneError(f"catro: keep_fraction must be in (0, 1], got {fraction}")
        scatter = self.statistics(adapter, model, batches)
        return {name: self._solve(name, b, w, fraction).kept.tolist() for name, (b, w) in scatter.items()}

    def group_scatter(self, group) -> tuple[np.ndarray, np.ndarray]:
        """(b, w) per position of a coupled group: the sums over its scored layers (keeping a
        position keeps it in every one), from the statistics of the last :meth:`score`."""
        if not self.last_scatter:
            raise DetpruneError("catro: score the model before choosing subsets from its statistics")
        b, w = np.zeros(group.size), np.zeros(group.size)
        for member in group.members:
            if member.name in self.last_scatter:
                between, within = self.last_scatter[member.name]
                np.add.at(b, member.positions, between[member.channels])
                np.add.at(w, member.positions, within[member.channels])
        return b, w

    def removed_positions(self, coupled, group, count: int) -> np.ndarray:
        """The ``count`` prunable positions of ``group`` outside CATRO's trace-ratio subset of the
        rest (``prune_model(subsets=...)``), on :meth:`group_scatter`."""
        b, w = self.group_scatter(group)
        prunable = np.asarray(group.prunable, dtype=np.int64)
        keep = len(prunable) - count
        if keep < 1:
            return prunable
        kept = prunable[solve_trace_ratio(b[prunable], w[prunable], keep, self.ridge).kept]
        return np.setdiff1d(prunable, kept)

    def _solve(self, name: str, b: np.ndarray, w: np.ndarray, fraction: float) -> TraceRatioSolution:
        solution = solve_trace_ratio(b, w, max(1, round(fraction * len(b))), self.ridge)
        self.last_solutions[name] = solution
        self.last_stats.ratios[name] = solution.ratio
        self.last_stats.iterations[name] = len(solution.history) - 1
        return solution

    # --- statistics ----------------------------------------------------------------------------
    def statistics(
        self, adapter: DetectorAdapter, model: nn.Module, batches: Iterable[Batch]
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{layer: (b, w)} per-channel trace shares, from one no-grad forward per batch read."""
        points = adapter.activation_points(model)
        if not points:
            raise DetpruneError(f"{type(adapter).__name__}: the model has no prunable activation points to score")
        table = model_weight_table(self.class_weights, adapter, model, self.name)
        weights = None if table is None else dict(enumerate(table.tolist()))
        tick = time.perf_counter()
        stats = CatroStats()
        self.last_stats, self.last_solutions = stats, {}
        per_layer: dict[str, ClassStatistics] = {name: ClassStatistics() for name in points}
        no_geometry: set[str] = set()
        counts: dict[int, int] = {}
        rng = np.random.default_rng(self.seed)
        device = model_device(model)
        current: dict = {}

        def hook_for(name: str):
            def hook(module, inputs, output):
                if name in current["seen"]:
                    return  # a module called again in the same forward: its first call counts
                current["seen"].add(name)
                if not (
                    isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[0] == current["images"]
                ):
                    no_geometry.add(name)
                    return
                rois, labels, input_w = current["rois"], current["labels"], current["input_w"]
                feats = roi_align(output, rois.to(output.device, output.dtype), self.roi_size,
                                  spatial_scale=output.shape[-1] / input_w, sampling_ratio=2, aligned=True)
                per_layer[name].add(feats, labels)
            return hook

        handles = [module.register_forward_hook(hook_for(name)) for name, module in points.items()]
        total = len(batches) if hasattr(batches, "__len__") else None
        try:
            with scoring_state(model, train=False), torch.no_grad():
                for batch in progress_bar(batches, total=total, desc="catro", disable=not self.progress):
                    stats.images += len(batch)
                    rois, labels = self._samples(batch, counts, rng)
                    if not len(labels):
                        if self._full(counts):
                            break
                        continue
                    batch = batch.to(device)
                    current.update(
                        rois=rois, labels=labels, images=len(batch), input_w=batch.images.shape[-1], seen=set()
                    )
                    adapter.predict(model, batch, conf=0.99, max_det=1)  # the forward pass; detections unused
                    stats.batches += 1
                    stats.forward_passes += 1
                    if self._full(counts):
                        break
        finally:
            for handle in handles:
                handle.remove()
        object_classes = [c for c in counts if c != BACKGROUND]
        if not object_classes or len(counts) < 2:
            raise DetpruneError(
                f"catro needs labelled boxes of at least two classes (background counts as one); the scoring set "
                f"gave {sum(counts.values())} samples in {len(counts)} class(es)"
            )
        stats.samples_per_class = {("background" if c == BACKGROUND else str(c)): n for c, n in sorted(counts.items())}
        stats.unscored_layers = sorted(no_geometry)
        scatter = {name: s.scatter(weights) for name, s in per_layer.items() if name not in no_geometry and s.counts}
        stats.seconds = time.perf_counter() - tick
        return scatter

    def _full(self, counts: dict[int, int]) -> bool:
        return bool(counts) and all(n >= self.samples_per_class for n in counts.values()) and (
            not self.background or counts.get(BACKGROUND, 0) >= self.samples_per_class
        )

    def _samples(
        self, batch: Batch, counts: dict[int, int], rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """RoIs ``(N, 5)`` (image index, xyxy input pixels) and class ids of the samples this batch adds."""
        rois, labels = [], []
        hw = tuple(batch.images.shape[-2:])
        for i, (boxes, cls, ignore) in enumerate(zip(batch.boxes, batch.labels, batch.ignore)):
            boxes = boxes.float()
            is_object = ~(ignore.bool() | (cls < 0))
            for box, c in zip(boxes[is_object], cls[is_object].tolist()):
                if counts.get(c, 0) < self.samples_per_class and float((box[2:] - box[:2]).min()) > 0:
                    counts[c] = counts.get(c, 0) + 1
                    rois.append([float(i), *box.tolist()])
                    labels.append(c)
            if self.background and counts.get(BACKGROUND, 0) < self.samples_per_class:
                wanted = min(2, self.samples_per_class - counts.get(BACKGROUND, 0))
                for box in background_boxes(boxes, hw, wanted, rng):
                    counts[BACKGROUND] = counts.get(BACKGROUND, 0) + 1
                    rois.append([float(i), *box.tolist()])
                    labels.append(BACKGROUND)
        return torch.tensor(rois, dtype=torch.float32).reshape(-1, 5), torch.tensor(labels, dtype=torch.long)
