"""The latency backend interface and its registry.

A backend turns a module into the artifact it runs (:meth:`LatencyBackend.prepare`: an ONNX
file, the module itself, an engine) and times that artifact (:meth:`LatencyBackend.time`).
Whatever times models -- the latency-aware allocation, the latency tables, ``detprune bench``,
a run's report -- goes through here, so a model is prepared and timed one way everywhere.

A new backend is one module with one class::

    @register_backend
    class MyBackend(LatencyBackend):
        name = "my-backend"
        def prepare(self, module, example, work, tag="model", **options): ...
        def time(self, artifact, input_shape, warmup, runs, *, threads=None): ...
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

from detprune.errors import BadInputError, DetpruneError, UnsupportedError
from detprune.runtime.stats import LatencyStats

# the built-in backends: every other module of this package, imported on first look-up (each
# registers itself); the first three keep their order, so the CLI's default choice comes first
_BUILTIN = ("detprune.runtime.ort", "detprune.runtime.torch_cuda", "detprune.runtime.trt")
_NOT_BACKENDS = {"base", "stats"}
_REGISTRY: dict[str, type["LatencyBackend"]] = {}


class LatencyBackend(ABC):
    """One way of running a model: prepare an artifact, time it."""

    name: ClassVar[str]
    needs_cuda: ClassVar[bool] = False

    def check(self) -> None:
        """A one-line error, before anything is pruned, where this backend cannot run here."""
        if self.needs_cuda:
            import torch

            if not torch.cuda.is_available():
                raise UnsupportedError(f"the {self.name} backend needs a CUDA GPU; PyTorch sees none "
                                       "(torch.cuda.is_available() is False)")

    @abstractmethod
    def prepare(self, module, example, work: Path, tag: str = "model", **options: Any) -> Any:
        """The artifact this backend times for ``module`` (exported as is) on input ``example``;
        files go under ``work`` named after ``tag``."""

    @abstractmethod
    def time(self, artifact, input_shape: Sequence[int], warmup: int, runs: int, *,
             threads: int | None = None) -> LatencyStats:
        """Latency of one artifact for an input of ``input_shape`` (B, C, H, W)."""

    def time_side_by_side(self, artifacts: Mapping[str, Any], input_shape: Sequence[int], warmup: int, runs: int, *,
                          threads: int | None = None) -> dict[str, LatencyStats]:
        """Several artifacts timed in one session (one after another unless the backend interleaves)."""
        return {tag: self.time(a, input_shape, warmup, runs, threads=threads) for tag, a in artifacts.items()}

    def device(self) -> str:
        """What the timings ran on, as :attr:`LatencyStats.device` names it."""
        return self.name


def register_backend(cls: type[LatencyBackend]) -> type[LatencyBackend]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    _REGISTRY[cls.name] = cls
    return cls


def _load_builtin() -> None:
    import pkgutil

    import detprune.runtime as package

    others = sorted(f"{package.__name__}.{m.name}" for m in pkgutil.iter_modules(package.__path__)
                    if m.name not in _NOT_BACKENDS)
    for module in dict.fromkeys([*_BUILTIN, *others]):
        importlib.import_module(module)


def names() -> tuple[str, ...]:
    """The registered backend names (the CLI's ``--backend`` choices): the built-ins in the order of
    :data:`_BUILTIN` (whichever was imported first), then the others as they registered."""
    _load_builtin()
    registered = list(_REGISTRY)
    rank = {module: k for k, module in enumerate(_BUILTIN)}
    return tuple(sorted(registered, key=lambda n: (rank.get(_REGISTRY[n].__module__, len(rank)), registered.index(n))))


def get_backend(name: str) -> LatencyBackend:
    _load_builtin()
    if name not in _REGISTRY:
        raise BadInputError(f"unknown backend {name!r}; choose one of {', '.join(names())}")
    return _REGISTRY[name]()


def check_backend(name: str) -> None:
    """A one-line error, before anything is pruned, where ``name`` cannot run on this machine."""
    _load_builtin()
    if name not in _REGISTRY:
        raise DetpruneError(f"unknown latency backend {name!r}; choose one of {', '.join(names())}")
    get_backend(name).check()


def measure_latency(backend: str, model_or_path, input_shape: Sequence[int], warmup: int = 10, runs: int = 100,
                    *, threads: int | None = None) -> LatencyStats:
    """Time ``model_or_path`` on ``backend`` with an input of ``input_shape`` (B, C, H, W).

    ``model_or_path`` is an ONNX file or an ``nn.Module`` (exported to a temporary ONNX file)
    for ``onnxruntime``, an ``nn.Module`` for ``torch-cuda`` and an engine file for ``tensorrt``.
    """
    runner = get_backend(backend)
    if warmup < 0 or runs < 1:
        raise BadInputError(f"need warmup >= 0 and runs >= 1, got {warmup} and {runs}")
    return runner.time(model_or_path, [int(d) for d in input_shape], warmup, runs, threads=threads)


def prepare(backend: str, module, example, work: str | Path, tag: str = "model", **options: Any) -> Any:
    """The one artifact builder: what ``backend`` times for ``module`` (see :meth:`LatencyBackend.prepare`)."""
    return get_backend(backend).prepare(module, example, Path(work), tag, **options)


def time_side_by_side(backend: str, artifacts: Mapping[str, Any], input_shape: Sequence[int], warmup: int = 10,
                      runs: int = 100, *, threads: int | None = None) -> dict[str, LatencyStats]:
    """Several prepared artifacts timed in one session; interleaved round by round where the backend can."""
    if warmup < 0 or runs < 1:
        raise BadInputError(f"need warmup >= 0 and runs >= 1, got {warmup} and {runs}")
    return get_backend(backend).time_side_by_side(artifacts, [int(d) for d in input_shape], warmup, runs,
                                                  threads=threads)
