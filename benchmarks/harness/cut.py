"""The benchmarks' cut is the library's: a :class:`PruneConfig` through :func:`detprune.workflow.cut.cut`.

A row's settings (target, allocation, rounding, input size) become the config ``detprune prune``
would build from the same flags, are checked by the same validation, and prune through the same
call, so a figure in docs/benchmarks.md is the figure a user's run of those settings gets.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from detprune.workflow.config import PruneConfig
from detprune.workflow.cut import cut


def cut_as_run(
    adapter,
    model,
    scores: Mapping[str, torch.Tensor],
    *,
    imgsz,
    allocation: str = "global",
    criterion: Any = None,
    width_scores: Mapping[str, torch.Tensor] | None = None,
    **settings: Any,
):
    """Prune ``model`` in place as a prune run with these settings does; the :class:`PruneResult`.

    ``settings``: further :class:`PruneConfig` fields (``target_flops``, ``round_to``, ``cost``, ...);
    ``criterion``: the scoring object, whose declared capabilities (CATRO's joint channel choice)
    the run honours; ``width_scores``: another criterion's scores the widths are allocated on
    (``widths_from`` names it). The allocation is always named: a benchmark's row says what it measures.
    """
    config = PruneConfig(imgsz=imgsz, allocation=allocation, **settings).validate()
    result, _ = cut(adapter, model, scores, config, criterion=criterion, width_scores=width_scores)
    return result
