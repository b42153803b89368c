"""Extra trainer arguments (``--trainer-arg KEY=VALUE`` or a recipe's mapping), typed."""

from __future__ import annotations

from detprune.errors import BadInputError


def parse_trainer_args(values) -> dict:
    """``["mosaic=0.5", "freeze=10"]`` (flags) or ``{mosaic: 0.5}`` (a recipe) as a dict of typed values."""
    import yaml

    if values is None:
        return {}
    if isinstance(values, dict):
        return {str(k): v for k, v in values.items()}
    parsed = {}
    for item in values:
        key, sep, text = str(item).partition("=")
        if not sep or not key.strip():
            raise BadInputError(f"--trainer-arg {item!r}: expected KEY=VALUE, e.g. mosaic=0.5")
        try:
            parsed[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise BadInputError(f"--trainer-arg {item!r}: the value is not a number, word or list") from None
    return parsed
