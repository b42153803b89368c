"""Reading ``.pt`` files without running code stored in them.

``torch.load(weights_only=True)`` unpickles tensors and plain containers only; a YOLO checkpoint
also pickles its modules (``DetectionModel``, ``Conv``, ``C2f``, detprune's split blocks ...).
Those classes are allowed here by name -- ``nn.Module`` subclasses defined in the module trees
below, plus a few data types ultralytics stores -- so detprune's and ultralytics' own
checkpoints load with the restricted unpickler. Anything else (``os.system``, ``eval``, an
unknown class) is refused with its name, unless the caller trusts the file
(:func:`load_policy` ``trust_checkpoint=True``, the CLI's ``--trust-checkpoint``), which
switches to the unrestricted loader after a one-line warning.

The policy lives in a context variable so the CLI sets it once per command and every loader
below the command sees it, without a flag threaded through each adapter call.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import importlib
import pickle
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Iterator

from detprune.errors import BadInputError

# Module trees whose nn.Module subclasses a YOLO or Faster R-CNN checkpoint may hold.
MODULE_TREES = (
    "torch.nn.modules",
    "ultralytics.nn.modules",
    "ultralytics.nn.tasks",
    "ultralytics.nn.distill_model",
    "detprune.adapters.yolo.rewrites",
    "detprune.adapters.yolo_rewrites",  # checkpoints written before adapters/yolo/ was a package
    "torchvision.ops",
)
# Classes (not modules) an ultralytics checkpoint stores: the training state's loss and assigner
# objects, its settings namespace; only classes defined in these modules themselves.
CLASS_MODULES = ("ultralytics.utils.loss", "ultralytics.utils.tal")
TRUST_FLAG = "--trust-checkpoint"


@dataclasses.dataclass(frozen=True)
class LoadPolicy:
    """How model and weights files are read.

    ``trust_checkpoint``: unpickle files that need classes outside the allow-list (can run code).
    ``partial_weights``: load a weights file that matches only part of the model.
    ``random_init``: build a model that no weights initialise (an architecture yaml or name alone).
    """

    trust_checkpoint: bool = False
    partial_weights: bool = False
    random_init: bool = True


_POLICY: contextvars.ContextVar[LoadPolicy] = contextvars.ContextVar("detprune_load_policy", default=LoadPolicy())


def current_policy() -> LoadPolicy:
    return _POLICY.get()


@contextlib.contextmanager
def load_policy(**changes: bool) -> Iterator[LoadPolicy]:
    """Within the block, loaders follow ``current_policy()`` with ``changes`` applied."""
    token = _POLICY.set(dataclasses.replace(_POLICY.get(), **changes))
    try:
        yield _POLICY.get()
    finally:
        _POLICY.reset(token)


def require_weights(spec: Any, weights_hint: str) -> None:
    """Refuse to build a detector no weights initialise unless the policy allows it (``--random-init``).

    One rule for every family: pruning, scoring or evaluating random weights gives numbers that look
    like results and mean nothing, so it is never done without being asked for.
    """
    if not current_policy().random_init:
        raise BadInputError(
            f"{spec}: no weights given, so this would be a randomly initialised detector (nothing is downloaded); "
            f"give {weights_hint}, or pass --random-init to start from random weights"
        )


def notice(message: str) -> None:
    """One line for the person running the command (stderr, so stdout stays the result)."""
    print(f"detprune: {message}", file=sys.stderr, flush=True)


# --- the allow-list ---------------------------------------------------------------------------


def _data_globals() -> dict[str, Any]:
    """Non-module globals ultralytics checkpoints hold, by their pickled name."""
    import pathlib

    import numpy as np
    import torch

    entries: dict[str, Any] = {
        "torch.torch_version.TorchVersion": torch.torch_version.TorchVersion,
        "pathlib.PosixPath": pathlib.PosixPath,
        "pathlib._local.PosixPath": pathlib.PosixPath,
        "types.SimpleNamespace": __import__("types").SimpleNamespace,
        "numpy.dtype": np.dtype,
    }
    scalar = np.float64(0).__reduce__()[0]  # numpy's scalar rebuild function (metrics, best_fitness)
    for name in ("numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar"):
        entries[name] = scalar
    for dtype in (np.float16, np.float32, np.float64, np.int32, np.int64, np.bool_):
        cls = type(np.dtype(dtype))
        entries[f"{cls.__module__}.{cls.__qualname__}"] = cls
    try:
        from ultralytics.utils import IterableSimpleNamespace

        entries["ultralytics.utils.IterableSimpleNamespace"] = IterableSimpleNamespace
    except ImportError:
        pass
    return entries


def _allowed(name: str, data: dict[str, Any]) -> Any | None:
    """The object a pickled global ``module.Name`` may resolve to, or None when it is not allowed."""
    if name in data:
        return data[name]
    module, _, attr = name.rpartition(".")
    in_tree = any(module == tree or module.startswith(tree + ".") for tree in MODULE_TREES)
    if not (in_tree or module in CLASS_MODULES) or not attr.isidentifier():
        return None
    try:
        obj = getattr(importlib.import_module(module), attr, None)
    except ImportError:
        return None
    if not isinstance(obj, type) or (module in CLASS_MODULES and obj.__module__ != module):
        return None
    from torch import nn

    return obj if module in CLASS_MODULES or issubclass(obj, nn.Module) else None


def _globals_in(path: Path) -> list[str] | None:
    """Every global the file's pickle names beyond torch's defaults (scanned, nothing run); None if not a torch zip."""
    import torch

    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # not a zip archive (legacy format, damaged): torch.load reports it below
        return None


# --- loading ------------------------------------------------------------------------------------

_UNSUPPORTED_GLOBAL = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)")


def load_torch_file(path: str | Path, *, what: str = "checkpoint") -> Any:
    """``torch.load`` of ``path`` on the CPU with the restricted unpickler and the allow-list.

    One-line :class:`BadInputError` for a missing, truncated or corrupt file, and for a file
    that pickles a global outside the allow-list (it names the global and ``--trust-checkpoint``).
    """
    import torch

    from detprune.utils.torch_archive import check_torch_file

    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: {what} file not found")
    check_torch_file(path, what)  # layout, repeated members, CRCs: the scan below sees what torch reads
    data = _data_globals()
    needed = _globals_in(path) or []
    refused = [name for name in needed if _allowed(name, data) is None]
    if refused:
        return _untrusted(path, refused[0], what)
    allowed = [(_allowed(name, data), name) for name in needed]
    constructed = _constructor_calls(
        path, {name for name, obj in allowed_pairs(allowed) if _is_class_we_add(obj)}, what
    )
    if constructed:
        return _untrusted(path, constructed, what, why="its constructor would run with arguments from the file")
    try:
        with torch.serialization.safe_globals(allowed), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch's note on pickle protocols it did not write
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _UNSUPPORTED_GLOBAL.search(str(exc))
        name = found.group(1) if found else _first_global(path)
        if name is not None:  # a global the restricted unpickler refused; otherwise the bytes are broken
            return _untrusted(path, name, what)
        raise _damaged(path, exc, what) from None
    except Exception as exc:  # the restricted unpickler ran nothing: any failure means broken bytes
        raise _damaged(path, exc, what) from None
    planted = _planted_call(loaded)
    if planted:
        return _untrusted(path, planted, what,
                          why="it holds a class where the module would call it when run (a hook or an attribute)")
    return loaded


def _planted_call(obj: Any) -> str | None:
    """A class stored where a loaded module will call it: in a hook table or as an instance attribute.

    Only allow-listed classes can be in the file, and checkpoints never store them there; calling one
    at run time (``forward`` replaced, a forward hook) would run its constructor with runtime arguments.
    """
    from torch import nn

    roots = list(obj.values()) if isinstance(obj, dict) else [obj]
    for root in roots:
        if not isinstance(root, nn.Module):
            continue
        for module in root.modules():
            for key, value in vars(module).items():
                entries = value.values() if key.endswith("hooks") and isinstance(value, dict) else [value]
                if any(isinstance(entry, type) for entry in entries):
                    return f"{type(module).__name__}.{key}"
    return None


def allowed_pairs(allowed: list[tuple[Any, str]]) -> Iterator[tuple[str, Any]]:
    return ((name, obj) for obj, name in allowed)


def _is_class_we_add(obj: Any) -> bool:
    """An allow-listed class whose constructor must not run: a pickle may only ``__new__`` it."""
    from torch import nn

    return isinstance(obj, type) and (issubclass(obj, nn.Module) or obj.__module__ in CLASS_MODULES)


def _pickles(path: Path) -> Iterator[bytes]:
    """The pickle streams torch will unpickle: the ``data.pkl`` record its own zip reader returns, else
    the whole (legacy) file."""
    import torch

    from detprune.utils.torch_archive import ZIP_MAGIC

    with path.open("rb") as handle:
        is_zip = handle.read(len(ZIP_MAGIC)) == ZIP_MAGIC  # torch's own test
    if not is_zip:
        yield path.read_bytes()
        return
    with path.open("rb") as handle, torch.serialization._open_zipfile_reader(handle) as reader:
        yield reader.get_record("data.pkl")


def _constructor_calls(path: Path, classes: set[str], what: str = "checkpoint") -> str | None:
    """The first of ``classes`` the file's pickle calls (REDUCE / INST / OBJ) rather than ``__new__``s.

    Checkpoints create modules with NEWOBJ (``cls.__new__``, then their state); calling a model
    class with arguments from the file would run its constructor (ultralytics' parses a yaml with
    ``eval``; its DistillationModel loads another file unrestricted), so that is refused. The pickle
    opcodes are followed with a symbolic stack that tracks only which globals sit where. A stream the
    scan cannot follow is refused: what cannot be checked is not unpickled.
    """
    import io
    import pickletools

    if not classes:
        return None
    try:
        streams = list(_pickles(path))
    except Exception as exc:  # torch's own reader cannot read the archive
        raise _damaged(path, exc, what) from None
    for stream in streams:
        handle = io.BytesIO(stream)
        for _ in range(5):  # a legacy file is five pickles in a row (magic, protocol, info, data, storage keys)
            start = handle.tell()
            if start >= len(stream):
                break
            try:
                found = _scan_one(pickletools.genops(handle), classes)
            except Exception as exc:
                raise _damaged(path, exc, what) from None
            if found is not None:
                return found
            if handle.tell() == start:
                break
    return None


def _scan_one(ops: Iterator, classes: set[str]) -> str | None:
    stack: list[Any] = []
    memo: dict[Any, Any] = {}
    for op, arg, _ in ops:
        name = op.name
        if name in ("REDUCE", "OBJ", "INST"):
            if name == "INST":
                callee = str(arg).replace(" ", ".")
            elif name == "OBJ":
                callee = (_after_mark(stack) or [None])[0]
            else:
                callee = stack[-2] if len(stack) >= 2 else None
            if isinstance(callee, str) and callee in classes:
                return callee
        if name == "GLOBAL":
            stack.append(str(arg).replace(" ", "."))
        elif name == "STACK_GLOBAL":
            attr = stack.pop() if stack else None
            module = stack.pop() if stack else None
            stack.append(f"{module}.{attr}")
        elif name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
            stack.append(str(arg))
        elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[arg] = stack[-1] if stack else None
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1] if stack else None
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            stack.append(memo.get(arg))
        elif name == "DUP":
            stack.append(stack[-1] if stack else None)
        else:
            _apply_generic(op, stack)
    return None


_MARK = object()


def _after_mark(stack: list[Any]) -> list[Any]:
    for i in range(len(stack) - 1, -1, -1):
        if stack[i] is _MARK:
            return stack[i + 1:]
    return []


def _apply_generic(op: Any, stack: list[Any]) -> None:
    """An opcode's effect on the symbolic stack from pickletools' own stack descriptions."""
    import pickletools

    before, after = op.stack_before, op.stack_after
    if pickletools.markobject in before:
        while stack and stack[-1] is not _MARK:
            stack.pop()
        if stack:
            stack.pop()
        for _ in range(before.index(pickletools.markobject)):
            if stack:
                stack.pop()
    else:
        for _ in before:
            if stack:
                stack.pop()
    for item in after:
        stack.append(_MARK if item is pickletools.markobject else None)


def _first_global(path: Path) -> str | None:
    """The first global a plain pickle file names (read with pickletools, nothing run)."""
    import pickletools

    strings: list[str] = []
    try:
        with path.open("rb") as handle:
            for op, arg, _ in pickletools.genops(handle):
                if op.name == "GLOBAL":
                    return str(arg).replace(" ", ".")
                if op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    return f"{strings[-2]}.{strings[-1]}"
                if isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # not a pickle after all
        return None
    return None


def _untrusted(path: Path, name: str, what: str, why: str | None = None) -> Any:
    """Refuse a file the restricted loader cannot read, or read it unrestricted when it is trusted."""
    import torch

    if not current_policy().trust_checkpoint:
        raise BadInputError(
            f"{path}: refusing to unpickle {name} ("
            + (why or f"not one of the classes detprune and ultralytics {what} files hold")
            + f"; unpickling it may run code stored in the file); pass {TRUST_FLAG} if you trust this file"
        )
    notice(f"warning: {path}: loading with the unrestricted pickle loader ({TRUST_FLAG}); it needs {name} "
           "and can run code stored in the file")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise _damaged(path, exc, what) from None


def _damaged(path: Path, exc: BaseException, what: str) -> BadInputError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return BadInputError(
        f"{path}: cannot read the {what} file: it is truncated or corrupt ({type(exc).__name__}: {first})"
    )


def describe_damage(path: str | Path) -> str | None:
    """Why ``path`` (an existing file) cannot be a torch file, without unpickling: None if it may be one."""
    from detprune.utils.torch_archive import check_torch_file

    try:
        check_torch_file(Path(path), "model")
    except BadInputError as err:
        return str(err).split(": cannot read the model file: ", 1)[-1]
    return None
