"""detprune: prune object detectors for driving perception without losing small objects.

The Python API mirrors the CLI: ``load`` a detector through its adapter, ``score`` its
channels, ``prune`` them, ``finetune``, ``evaluate`` and ``export``. Heavy modules are
imported on first use so that ``import detprune`` stays fast.
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

# public name -> "module:attribute", resolved lazily
_API = {
    "DetpruneError": "detprune.errors:DetpruneError",
    "load": "detprune.api:load",
    "score": "detprune.api:score",
    "prune": "detprune.api:prune",
    "run": "detprune.api:run",
    "PruneConfig": "detprune.workflow.config:PruneConfig",
    "finetune": "detprune.api:finetune",
    "evaluate": "detprune.api:evaluate",
    "export": "detprune.api:export",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'detprune' has no attribute {name!r}")
    module, attr = _API[name].split(":")
    return getattr(importlib.import_module(module), attr)


class _Package(types.ModuleType):
    """``detprune.export`` is the API function, also once the ``detprune.export`` subpackage is imported.

    Importing a subpackage binds its name on the parent (``setattr(detprune, "export", package)``),
    which would hide the function; this property keeps the function there. The subpackage itself
    stays importable by its full name (``from detprune.export.onnx import ...``, via sys.modules).
    """

    @property
    def export(self):
        return __getattr__("export")

    @export.setter
    def export(self, package) -> None:
        pass  # the subpackage: reached through sys.modules["detprune.export"]


sys.modules[__name__].__class__ = _Package
