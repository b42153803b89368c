"""An architecture yaml is data: checked before ultralytics builds anything from it.

ultralytics' ``parse_model`` ``eval``s the ``activation`` string (unless its restricted mode is on),
so an ``activation`` is accepted only as ``nn.<Module>(literal arguments)`` naming a ``torch.nn``
activation module. The numbers it reads (``nc``, multipliers, ``scales``, ``reg_max``) are checked
for type, range and finiteness here, so a bad value is one line, not a traceback from deep inside.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from detprune.errors import BadInputError
from detprune.utils.numbers import real_number, whole_number


def check_architecture(cfg: dict, spec: str | Path) -> None:
    """Refuse an ``activation`` other than a ``torch.nn`` module call with literal arguments, and bad numbers;
    numbers are written back as the types ultralytics expects (``nc: 3.0`` becomes 3)."""
    act = cfg.get("activation")
    if act is not None:
        activation_module(act, spec)
    if cfg.get("nc") is not None:
        cfg["nc"] = whole_number(cfg["nc"], f"{spec}: nc", low=1, high=100_000)
    if "reg_max" in cfg:
        cfg["reg_max"] = whole_number(cfg["reg_max"], f"{spec}: reg_max", low=1, high=64)
    for key in ("depth_multiple", "width_multiple"):
        if key in cfg:
            cfg[key] = real_number(cfg[key], f"{spec}: {key}", low=0.0, high=16.0, low_open=True)
    scales = cfg.get("scales")
    if scales is not None:
        if not isinstance(scales, dict):
            raise BadInputError(f"{spec}: 'scales' must map a scale letter to [depth, width, max_channels]")
        for name, row in scales.items():
            if not isinstance(row, (list, tuple)) or len(row) != 3:
                raise BadInputError(f"{spec}: scales.{name} must be [depth, width, max_channels], got {row!r}")
            scales[name] = [
                real_number(row[0], f"{spec}: scales.{name} depth", low=0.0, high=16.0, low_open=True),
                real_number(row[1], f"{spec}: scales.{name} width", low=0.0, high=16.0, low_open=True),
                whole_number(row[2], f"{spec}: scales.{name} max_channels", low=1, high=1 << 16),
            ]


def activation_module(act: Any, spec: str | Path):
    """The ``torch.nn`` activation an ``activation:`` entry names, built without ``eval``; one-line error otherwise."""
    from torch import nn

    refuse = BadInputError(
        f"{spec}: activation {str(act)[:80]!r} is not a torch.nn module call with literal arguments "
        "(e.g. nn.SiLU(), nn.LeakyReLU(0.1)); an architecture yaml may not hold code"
    )
    if not isinstance(act, str) or len(act) > 200:
        raise refuse
    try:
        call = ast.parse(act.strip(), mode="eval").body
    except SyntaxError:
        raise refuse from None
    if not isinstance(call, ast.Call) or not _is_nn_name(call.func):
        raise refuse
    try:
        args = [ast.literal_eval(a) for a in call.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg is not None}
    except ValueError:
        raise refuse from None
    if len(kwargs) != len(call.keywords):
        raise refuse
    cls = getattr(nn, call.func.attr, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module) and cls.__module__ == "torch.nn.modules.activation"):
        raise refuse
    try:
        return cls(*args, **kwargs)
    except (TypeError, ValueError):
        raise refuse from None


def _is_nn_name(node: ast.AST) -> bool:
    """``nn.X`` or ``torch.nn.X``."""
    if not isinstance(node, ast.Attribute):
        return False
    owner = node.value
    if isinstance(owner, ast.Name):
        return owner.id == "nn"
    return (isinstance(owner, ast.Attribute) and owner.attr == "nn" and isinstance(owner.value, ast.Name)
            and owner.value.id == "torch")
