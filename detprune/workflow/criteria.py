"""The run's criteria: built from the settings (options, class weights), scores read from a file."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from detprune.errors import BadInputError
from detprune.workflow.config import PruneConfig, allocation, default_criterion


def build(config: PruneConfig, name: str | None = None, options: bool = True):
    """The run's criterion with its options, or criterion ``name`` with its defaults."""
    from detprune.criteria.base import build_criterion, parse_options

    chosen = parse_options(config.criterion_option) if options else {}
    defaults: dict[str, Any] = {"seed": config.seed, "progress": True}
    if config.class_weights is not None:  # the main criterion must take them; widths_from's gets them where it does
        from detprune.criteria.class_weights import parse_class_weights

        weights = parse_class_weights(config.class_weights)
        if options and not takes_class_weights(config.criterion_name):
            raise BadInputError(f"--class-weights does not apply to criterion {config.criterion_name!r}")
        (chosen if options else defaults)["class_weights"] = weights
    return build_criterion(name or config.criterion_name, chosen, defaults)


def check_has_objects(dataset, criterion) -> None:
    """A data-driven criterion scores what the detector does on objects: a scoring set without
    one object box gives scores that mean nothing (one line instead)."""
    if not getattr(criterion, "needs_data", False) or dataset is None:
        return
    if not any(sample.num_objects for sample in dataset.samples):
        raise BadInputError(
            f"the scoring set ({len(dataset)} images) has no object box; criterion "
            f"{getattr(criterion, 'name', criterion)!r} needs images with objects"
        )


def takes_class_weights(name: str) -> bool:
    from detprune.criteria import get_criterion

    return "class_weights" in inspect.signature(type(get_criterion(name)).__init__).parameters


def data_free_note(config: PruneConfig) -> str:
    """One line: a data-free cut is known to collapse, how far was measured, and what to do."""
    from detprune.defaults import DATA_FREE_WARNING
    from detprune.pruning.allocation import default_allocation

    data_criterion = default_criterion(True)
    return "warning: " + DATA_FREE_WARNING.format(
        criterion=f"{config.criterion_name}, {allocation(config)}",
        data_criterion=data_criterion,
        data_allocation=default_allocation(data_criterion),
    )


def read_scores(path: str | Path) -> dict:
    """{layer name: tensor} from a scores.pt ``detprune score`` wrote; anything else is one line."""
    import torch

    from detprune.utils.checkpoints import load_torch_file

    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: scores file not found")
    scores = load_torch_file(path, what="scores")  # the one safe-load path: layout, CRCs, allow-list
    if not isinstance(scores, dict) or not all(isinstance(v, torch.Tensor) for v in scores.values()):
        raise BadInputError(f"{path}: expected {{layer name: tensor}} as 'detprune score' writes")
    return dict(scores)
