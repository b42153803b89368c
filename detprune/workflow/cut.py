"""The cut itself, as the prune run and ``detprune.prune`` make it: one call, one set of defaults.

:func:`cut` turns a :class:`~detprune.workflow.config.PruneConfig` (target, allocation, limits,
image size) and the scores into :func:`detprune.pruning.prune_model`'s arguments, or the
latency search's, so the same settings keep the same channels whichever caller asks.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import nn

from detprune.adapters.base import DetectorAdapter
from detprune.workflow.config import PruneConfig, allocation, chooses_subsets


class ChannelScores(dict):
    """{layer name: scores} that remember the criterion that made them (``detprune.score``).

    ``detprune.prune`` reads the criterion to pick its default allocation (and CATRO's joint
    channel choice) as the prune run does. Saved with ``torch.save``, it is a plain dict.
    """

    def __init__(self, scores: Mapping[str, torch.Tensor], criterion: str | None = None, scorer: Any = None):
        super().__init__(scores)
        self.criterion = criterion
        self.scorer = scorer

    def __reduce__(self):
        return dict, (dict(self),)


def cut_options(config: PruneConfig, criterion: Any = None) -> dict:
    """prune_model's keywords (target aside) for ``config``; ``criterion`` the scoring object."""
    return dict(
        allocation=allocation(config),
        cost=config.cost,
        subsets=criterion if chooses_subsets(config, criterion) else None,
        round_to=config.round_to,
        min_channels=config.min_channels,
        max_ratio=config.max_ratio,
        normalisation=config.normalisation,
    )


def cut(
    adapter: DetectorAdapter,
    model: nn.Module,
    scores: Mapping[str, torch.Tensor],
    config: PruneConfig,
    *,
    criterion: Any = None,
    width_scores: Mapping[str, torch.Tensor] | None = None,
    latency_table: Any = None,
    progress: Callable[[str], None] | None = None,
    **extra: Any,
):
    """Prune ``model`` in place as ``config`` says: (PruneResult, the latency search or None).

    ``criterion``: the object that scored (its declared ``joint_subsets`` capability decides
    CATRO's joint choice); ``extra``: further :func:`prune_model` keywords (``kept``, ``tolerance``).
    """
    options = cut_options(config, criterion)
    options["width_scores"] = width_scores
    if config.target_latency is not None:
        from detprune.pruning.latency_target import prune_by_table, prune_to_latency

        common = dict(
            target=config.target_latency,
            tolerance=config.latency_tolerance,
            imgsz=config.imgsz,
            runs=config.search_runs,
            threads=config.latency_threads,
            progress=progress or print,
        )
        if config.latency_search == "table":
            return prune_by_table(adapter, model, scores, latency_table, **common, **options)
        return prune_to_latency(
            adapter, model, scores, backend=config.backend, latency_table=latency_table, **common, **options
        )
    from detprune.pruning import prune_model

    result = prune_model(
        adapter,
        model,
        scores,
        target_flops=config.target_flops,
        target_params=config.target_params,
        ratio=config.ratio,
        imgsz=config.imgsz,
        latency_table=latency_table,
        **options,
        **extra,
    )
    return result, None
