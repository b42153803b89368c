"""One rule for every writer: an output never is or contains an input, nor replaces a part of one.

Paths are compared resolved (symlinks followed) and, for existing files, by inode (hard links),
whatever ``--exist-ok`` says: replacing an output folder must never delete the model or the
data the run reads, and a report must never land on a model or a label file. A dataset yaml
counts with the folder it points to (its ``path:``), where its images and labels live.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from detprune.errors import DetpruneError


def dataset_roots(given: Path) -> list[Path]:
    """The folders a dataset yaml reads beside the yaml itself (its ``path:``); [] for anything else."""
    if given.suffix.lower() not in (".yaml", ".yml") or not given.is_file():
        return []
    try:
        import yaml

        data = yaml.safe_load(given.read_text(errors="replace"))
    except Exception:  # not a yaml we can read: the command reports it; here it is only a file
        return []
    if not isinstance(data, dict) or not isinstance(data.get("path"), str) or not data["path"].strip():
        return []
    root = Path(data["path"]).expanduser()
    candidates = [root] if root.is_absolute() else [given.parent / root, root]  # beside the yaml, then the cwd
    return [c for c in candidates if c.exists()]


def relation(out: Path, given: Path) -> str | None:
    """How ``out`` meets the existing input ``given``: "is", "contains", "would replace a part of", or None."""
    try:
        dst, src = out.resolve(), given.resolve()
    except (OSError, RuntimeError):  # a symlink loop: nothing can be written there anyway
        return None
    if dst == src:
        return "is"
    if out.exists() and os.path.isfile(given) and os.path.isfile(out):
        try:
            if os.path.samefile(given, out):
                return "is"  # a hard link
        except OSError:
            pass
    if dst in src.parents:
        return "contains"
    if src in dst.parents and os.path.isdir(src) and os.path.lexists(out):
        return "would replace a part of"  # a new file beside the data removes nothing; replacing one may
    return None


def check_outputs(
    outputs: Iterable[tuple[str, str | os.PathLike]], inputs: Iterable[tuple[str, str | os.PathLike]]
) -> None:
    """Refuse the first ``(flag, path)`` output that is, contains or lies inside an existing ``(flag, path)`` input."""
    existing: list[tuple[str, Path]] = []
    for flag, value in inputs:
        path = Path(value)
        if path.exists():
            existing.append((flag, path))
            existing.extend((f"{flag} ({path}'s data folder)", root) for root in dataset_roots(path))
    for out_flag, value in outputs:
        out = Path(value)
        for flag, given in existing:
            how = relation(out, given)
            if how is not None:
                raise DetpruneError(
                    f"{out_flag} {out}: {how} the input {flag} {given}; choose another output path "
                    "(an input is never overwritten or removed, with --exist-ok or not)"
                )
