"""SNIP connection sensitivity of each output channel under the detection loss.

Source: N. Lee, T. Ajanthan and P. H. S. Torr, "SNIP: Single-shot Network Pruning based on
Connection Sensitivity", ICLR 2019. The sensitivity of a connection ``w`` is ``|g * w|``
(``g = dL/dw``), the first-order change of the loss when ``w`` is removed. Anytime
Progressive Pruning (Misra et al., arXiv 2204.01640) scores with it at every megabatch,
on a sample of the data seen so far.

APP and SNIP prune single weights; detprune prunes channels, so a channel's sensitivity is
the sum of ``|g * w|`` over the parameters that go with it (filter, bias, and the scale and
shift of the normalisation layer that follows). That is exactly the first-order Taylor
criterion with ``reduction="abs"`` (:mod:`detprune.criteria.taylor`), which does the work.
"""

from __future__ import annotations

from typing import Mapping

from detprune.criteria.base import register_criterion
from detprune.criteria.taylor import FirstOrderTaylor


@register_criterion
class Snip(FirstOrderTaylor):
    """Channel-level SNIP: ``sum |g * w|`` over a channel's parameters (Lee et al., ICLR 2019)."""

    name = "snip"

    def __init__(
        self, class_weights: Mapping[str, float] | None = None, seed: int | None = 0, progress: bool = True
    ) -> None:
        super().__init__(reduction="abs", class_weights=class_weights, seed=seed, progress=progress)
