"""Class priorities of the data-driven criteria: ``{class name: weight > 0}``, unlisted classes weigh 1.

A weight scales its class's share of what a criterion measures: a box's mass in the saliency
weight map, a box's terms of the detection loss (Taylor, SNIP, loss-metric CAR), a class's
sample count in CATRO's scatter, a class's AP drop in mAP-metric CAR. Names become label ids
through the classes the model predicts (``adapter.class_names(model)``): those are the ids the
batches' labels index once a model is loaded for a dataset.

Weights that are all 1 are no weights: every criterion then takes its unweighted path, so
its scores are exactly those without the option.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from detprune.errors import DetpruneError

ClassWeights = dict[str, float]


def _weight(name: str, value: Any) -> float:
    if isinstance(value, bool):
        value = None  # YAML reads "yes" as True: not a weight
    try:
        weight = float(value)
    except (TypeError, ValueError):
        raise DetpruneError(f"class weights are CLASS=WEIGHT,...; got {name}={value!r}") from None
    if not weight > 0 or weight == float("inf"):
        raise DetpruneError(f"class weight of {name} must be positive, got {value}")
    return weight


def check_class_weights(weights: Mapping[str, Any] | None, class_names: Sequence[str] | None = None) -> ClassWeights:
    """``weights`` as ``{name: float}``, each positive and finite; with ``class_names``, each one of them."""
    if weights is None:
        return {}
    if not isinstance(weights, Mapping):
        raise DetpruneError(f"class weights must be a mapping {{class: weight}}, got {type(weights).__name__}")
    checked = {}
    for name, value in weights.items():
        if not isinstance(name, str) or not name.strip():
            raise DetpruneError(f"class weights: a class name must be a non-empty string, got {name!r}")
        checked[name.strip()] = _weight(name.strip(), value)
    if class_names is not None:
        unknown = [n for n in checked if n not in class_names]
        if unknown:
            raise DetpruneError(
                f"unknown class(es) {', '.join(unknown)} in the class weights; known: {', '.join(class_names)}"
            )
    return checked


def parse_class_weights(text: str | Mapping | None, class_names: Sequence[str] | None = None) -> ClassWeights:
    """``{class: weight}`` from ``"Pedestrian=3,Cyclist=3"``, from a YAML file holding such a mapping,
    or from a mapping (a recipe's field). An unknown class or a non-positive weight is an error."""
    if text is None or isinstance(text, Mapping):
        return check_class_weights(text, class_names)
    text = str(text)
    path = Path(text.strip())
    if "=" not in text and path.suffix.lower() in (".yaml", ".yml", ".json"):
        return check_class_weights(_read_mapping(path), class_names)
    weights: dict[str, Any] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            raise DetpruneError(f"class weights are CLASS=WEIGHT,... or a YAML file; got {part.strip()!r}")
        weights[name.strip()] = value.strip()
    return check_class_weights(weights, class_names)


def _read_mapping(path: Path) -> Any:
    import yaml

    if not path.is_file():
        raise DetpruneError(f"{path}: class weights file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise DetpruneError(f"{path}: not a YAML mapping of class weights ({type(err).__name__})") from None
    if not isinstance(data, Mapping):
        raise DetpruneError(f"{path}: expected a mapping {{class: weight}}, got {type(data).__name__}")
    return data


def weight_table(
    weights: Mapping[str, float] | None, class_names: Sequence[str], who: str = "class weights"
) -> torch.Tensor | None:
    """float64 weight per label id (the model's class order), or None when every weight is 1."""
    checked = check_class_weights(weights)
    if not checked:
        return None
    names = list(class_names)
    unknown = [n for n in checked if n not in names]
    if unknown:
        known = ", ".join(names) if names else "none (the model names no classes)"
        raise DetpruneError(f"{who}: unknown class(es) {', '.join(unknown)}; the model's classes: {known}")
    if all(w == 1.0 for w in checked.values()):
        return None
    return torch.tensor([checked.get(n, 1.0) for n in names], dtype=torch.float64)


def model_weight_table(weights: Mapping[str, float] | None, adapter, model, who: str) -> torch.Tensor | None:
    """:func:`weight_table` in ``model``'s class order; without weights the adapter is not asked."""
    return weight_table(weights, adapter.class_names(model), who) if weights else None


def box_weights(labels: Sequence[torch.Tensor], table: torch.Tensor) -> list[torch.Tensor]:
    """Per image, the float64 weight of each box by its label (class-less boxes, label -1, weigh 1)."""
    out = []
    for image_labels in labels:
        ids = image_labels.detach().reshape(-1).long().cpu()
        if ids.numel() and int(ids.max()) >= len(table):
            raise DetpruneError(f"class weights: label {int(ids.max())} but the model names {len(table)} classes")
        out.append(torch.where(ids >= 0, table[ids.clamp(min=0)], torch.ones(len(ids), dtype=torch.float64)))
    return out


def weighted_loss(adapter, model, batch, table: torch.Tensor | None, who: str) -> torch.Tensor:
    """The detection loss with each GT box's terms scaled by its class weight (``table`` None: the plain loss).

    Needs the adapter's ``weighted_detection_loss(model, batch, box_weights)``; a family whose loss
    has no per-box terms to scale lacks it, which is a one-line error.
    """
    if table is None:
        return adapter.detection_loss(model, batch)
    weigh = adapter.weighted_detection_loss
    if weigh is None:
        raise DetpruneError(f"{who} cannot weigh classes with the {getattr(adapter, 'family', type(adapter).__name__)} "
                            "adapter: its detection loss has no per-box weights")
    return weigh(model, batch, box_weights(batch.labels, table))
