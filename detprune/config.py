"""YAML recipes: the fields of a ``detprune`` subcommand, written down so a run can be repeated."""

from __future__ import annotations

from pathlib import Path

import yaml

from detprune.errors import BadInputError


def load_recipe(path: str | Path) -> dict:
    """Read a recipe; keys may use dashes or underscores (``target-flops`` == ``target_flops``)."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: recipe not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise BadInputError(f"{path}:{where} not valid YAML") from None
    if not isinstance(data, dict):
        raise BadInputError(f"{path}: a recipe is a mapping of field: value")
    return {str(k).replace("-", "_"): v for k, v in data.items()}
