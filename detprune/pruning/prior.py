"""A learned prior over widths that samples subnets evenly across the FLOPs range (PSE-Net, §3.3).

Drawing every group's width independently concentrates the subnets' FLOPs around the middle
of the range (a sum of many independent terms), so a supernet trained on such samples is a
poor estimator at the ends, where a budget usually lies. Two remedies, as in PSE-Net:

* **stratified sampling**: pick a FLOPs bin uniformly in [smallest, largest subnet], draw a
  subnet from the prior, then *repair* it into the bin by stepping one random group's width
  down (too many FLOPs) or up (too few) at a time; the bins are hit equally often;
* **a prior learned from the supernet**: per group a categorical distribution (softmax of
  logits) over its width choices. Now and then some sampled subnets are scored by the supernet
  itself (higher quality is better, e.g. minus the loss on a fixed probe minibatch); quality is
  fitted linearly against FLOPs, and each subnet's *advantage* is its residual above the fit,
  standardised. Every group's logits then move along the policy gradient
  ``lr * mean_i A_i * (onehot(choice_i) - p)``: width options of subnets that beat their
  FLOPs' expectation gain probability, whatever their size. The fit removes the trivial
  "wider is better" signal, so the prior learns the allocation, not the budget.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from detprune.errors import DetpruneError
from detprune.pruning.supernet import Subnet, WidthSpace

DEFAULT_BINS = 10


class WidthPrior:
    """Per-group categorical distributions over width choices, and FLOPs-aware sampling."""

    def __init__(self, space: WidthSpace, bins: int = DEFAULT_BINS):
        if bins < 1:
            raise DetpruneError(f"need at least one FLOPs bin, got {bins}")
        self.space = space
        self.bins = bins
        self.logits = [np.zeros(n) for n in space.options]
        self.low = space.flops_fraction(space.smallest())
        self.high = space.flops_fraction(space.largest())
        self.updates: list[dict] = []

    def probabilities(self) -> list[np.ndarray]:
        out = []
        for logits in self.logits:
            e = np.exp(logits - logits.max())
            out.append(e / e.sum())
        return out

    def draw(self, rng: np.random.Generator) -> Subnet:
        """Every group's width drawn independently from the prior."""
        return tuple(int(rng.choice(len(p), p=p)) for p in self.probabilities())

    def sample(self, rng: np.random.Generator) -> Subnet:
        """A subnet from the prior, repaired into a FLOPs bin chosen uniformly."""
        b = int(rng.integers(self.bins))
        step = (self.high - self.low) / self.bins
        return self.repair(self.draw(rng), self.low + b * step, self.low + (b + 1) * step, rng)

    def mutate(self, subnet: Subnet, rate: float, rng: np.random.Generator) -> Subnet:
        """Each group's width redrawn from the prior with probability ``rate``."""
        probs = self.probabilities()
        return tuple(int(rng.choice(len(p), p=p)) if rng.random() < rate else i for i, p in zip(subnet, probs))

    def repair(self, subnet: Sequence[int], low: float, high: float, rng: np.random.Generator) -> Subnet:
        """Step random groups' widths down (too many FLOPs) or up (too few) until the FLOPs fraction lies in [low,
        high].

        Far from the window several groups step at once (about half the steps the gap needs,
        at the FLOPs per step seen last), near it one at a time; a step that jumps over the
        window is kept (the next one comes back). After a bounded number of rounds the subnet
        closest to the window is returned.
        """
        options = self.space.options
        current = list(subnet)
        best, best_gap = tuple(current), np.inf
        per_step = (self.high - self.low) / max(sum(n - 1 for n in options), 1)
        f = self.space.flops_fraction(current)
        for _ in range(2 * sum(options)):
            gap = max(low - f, f - high, 0.0)
            if gap < best_gap:
                best, best_gap = tuple(current), gap
            if gap == 0.0:
                break
            delta = -1 if f > high else 1
            movable = [k for k, i in enumerate(current) if 0 <= i + delta < options[k]]
            if not movable:
                break
            moves = int(min(max(1, 0.5 * gap / max(per_step, 1e-9)), len(movable)))
            for k in rng.choice(movable, size=moves, replace=False):
                current[int(k)] += delta
            before, f = f, self.space.flops_fraction(current)
            per_step = max(abs(f - before) / moves, 1e-6)
        return best

    def update(
        self, subnets: Sequence[Subnet], flops: Sequence[float], quality: Sequence[float], lr: float = 0.5
    ) -> dict:
        """Move the logits towards the width options of subnets whose quality beats the FLOPs fit.

        Returns the fit and the advantages (also appended to ``updates``).
        """
        f, q = np.asarray(flops, dtype=float), np.asarray(quality, dtype=float)
        if len(subnets) < 3 or len(subnets) != len(f) or len(f) != len(q):
            raise DetpruneError("a prior update needs at least 3 scored subnets with their FLOPs and quality")
        slope, intercept = np.polyfit(f, q, 1) if np.ptp(f) > 0 else (0.0, float(q.mean()))
        residual = q - (slope * f + intercept)
        spread = residual.std()
        # residuals at rounding level (quality explained by FLOPs alone) carry no signal
        signal = spread > 1e-9 * max(float(np.abs(q).max()), 1e-12)
        advantage = residual / spread if signal else np.zeros_like(residual)
        for k, probs in enumerate(self.probabilities()):
            grad = np.zeros_like(probs)
            for subnet, a in zip(subnets, advantage):
                onehot = np.zeros_like(probs)
                onehot[subnet[k]] = 1.0
                grad += a * (onehot - probs)
            self.logits[k] = self.logits[k] + lr * grad / len(subnets)
        record = {"slope": float(slope), "intercept": float(intercept), "advantage": advantage.round(4).tolist(),
                  "flops": f.round(4).tolist(), "quality": q.round(4).tolist()}
        self.updates.append(record)
        return record

    def histogram(self, flops: Sequence[float]) -> np.ndarray:
        """Counts of ``flops`` fractions over the prior's bins."""
        edges = np.linspace(self.low, self.high, self.bins + 1)
        return np.histogram(np.clip(flops, self.low, self.high), bins=edges)[0]
