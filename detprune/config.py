"""YAML recipes: the fields of a ``detprune`` subcommand, written down so a run can be repeated.

A recipe is a mapping of field: value (``target-flops`` or ``target_flops``). A recipe that
several commands share holds one section per command (``train:``, ``prune:``, ``finetune:``,
each a mapping) beside the fields every one of them takes (``imgsz``, ``seed``, ``threads``):
``detprune train --config r.yaml`` reads the shared fields and ``train:``. Read without naming
a command, a recipe is a ``prune`` recipe (its shared fields and ``prune:``).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from detprune.errors import BadInputError

# commands whose section a shared recipe may hold
SECTIONS = ("data", "train", "score", "prune", "search", "finetune", "eval", "export", "engine", "bench", "demo")


def load_recipe(path: str | Path, command: str | None = None) -> dict:
    """Read a recipe (for ``command``, default prune); keys may use dashes or underscores."""
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
    sections = {k: v for k, v in data.items() if k in SECTIONS and isinstance(v, dict)}
    if sections:
        chosen = command or "prune"
        if chosen not in sections:
            raise BadInputError(f"{path}: has sections {', '.join(sections)}, none for 'detprune {chosen}'")
        shared = {k: v for k, v in data.items() if k not in sections}
        data = {**shared, **sections[chosen]}
    return {str(k).replace("-", "_"): v for k, v in data.items()}
