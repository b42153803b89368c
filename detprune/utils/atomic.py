"""Atomic outputs: write to a temporary sibling, then rename over the target.

An interrupted run leaves either the old file (or nothing) or the complete new one, never
a truncated model, engine or report. A write the file system refuses (read-only, full, no
such folder) becomes one :class:`DetpruneError` line naming the output, and the temporary is
removed. A work folder holds a marker with the writer's pid, so a later run for the same
output can tell a folder left by a killed run from one another run is still filling.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import stat
import tempfile
from pathlib import Path
from typing import Iterator

from detprune.errors import DetpruneError

WORK_MARKER = ".detprune-work"  # inside a work folder while it is being filled; removed before the rename
# errno values that mean "this output cannot be written here", whatever file the writer was at
_WRITE_ERRNOS = {
    errno.EROFS,
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EACCES,
    errno.EPERM,
    errno.ENOENT,
    errno.ENOTDIR,
    errno.EEXIST,
}
_HINTS = {
    errno.EROFS: "the file system is read-only; choose --out on a writable disk",
    errno.ENOSPC: "the disk is full; free space or choose --out elsewhere",
    errno.EDQUOT: "the disk quota is exhausted; free space or choose --out elsewhere",
    errno.EACCES: "no permission to write there; choose another --out",
    errno.EPERM: "no permission to write there; choose another --out",
    errno.ENOENT: "nothing can be created there; choose another --out",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another --out",
    errno.EEXIST: "the path or a folder above it exists and is not a folder; choose another --out",
}


# --- one-line descriptions of write failures -------------------------------------------------


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines() or [type(err).__name__])[0][:200]


def describe_os_error(err: OSError) -> str:
    """``<file>: <what the system said> (<errno name>); <what to do>`` on one line."""
    where = err.filename if err.filename is not None else ""
    what = err.strerror or first_line(err)
    name = errno.errorcode.get(err.errno, "") if err.errno else ""
    hint = _HINTS.get(err.errno, "")
    text = f"{where}: {what}" if where else what
    return text + (f" ({name})" if name else "") + (f"; {hint}" if hint else "")


def is_write_failure(err: BaseException) -> bool:
    """torch.save's RuntimeError for a write the disk refused (e.g. full): its zip writer's messages."""
    text = str(err)
    return isinstance(err, RuntimeError) and any(
        key in text for key in ("inline_container", "PytorchStreamWriter", "file write failed", "unexpected pos")
    )


def _output_error(target: Path, err: BaseException) -> DetpruneError:
    if isinstance(err, OSError):
        name = errno.errorcode.get(err.errno, "") if err.errno else ""
        what = _HINTS.get(err.errno) or (err.strerror or first_line(err))
        return DetpruneError(f"{target}: cannot write the output: {what}" + (f" ({name})" if name else ""))
    return DetpruneError(f"{target}: cannot write the output, the disk may be full ({first_line(err)})")


def _about(err: OSError, folder: Path) -> bool:
    """Whether ``err`` is a refusal to write inside ``folder`` (not, say, a missing input file)."""
    if err.errno not in _WRITE_ERRNOS:
        return False
    if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return True
    for name in (err.filename, err.filename2):
        if name is not None and (Path(os.fsdecode(name)) == folder or folder in Path(os.fsdecode(name)).parents):
            return True
    return False


def _make_parent(target: Path) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _output_error(target, err) from None


# --- atomic files and folders ------------------------------------------------------------------


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success rename it onto ``target``.

    The temporary keeps the target's suffix (or ``suffix``) because some writers
    (torch.onnx, cv2.imwrite, matplotlib) choose a format from it.
    """
    target = Path(target)
    _make_parent(target)
    remove_stale_temp_files(target)
    existed = os.path.lexists(target)  # the caller decided to replace it; a file appearing meanwhile is not ours
    try:
        fd, tmp = tempfile.mkstemp(
            prefix=_temp_prefix(target), suffix=suffix if suffix is not None else target.suffix, dir=target.parent
        )
        os.close(fd)
    except OSError as err:
        raise _output_error(target, err) from None
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
            _as_created(tmp_path, 0o666)  # mkstemp makes 0600: give the mode a plain open() would
            if existed:
                os.replace(tmp_path, target)
            else:
                _place_new(tmp_path, target)
        except OSError as err:
            if not (_about(err, tmp_path) or _about(err, target)):
                raise  # e.g. an input the writer reads is missing: not a fault of the output
            raise _output_error(target, err) from None
        except RuntimeError as err:
            if not is_write_failure(err):
                raise
            raise _output_error(target, err) from None
    finally:
        with contextlib.suppress(OSError):
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder next to ``target``; on success it replaces ``target``.

    Work folders an earlier, killed run left for the same ``target`` are removed first (one line
    says so); only folders with this module's marker whose writer is gone are touched.
    """
    target = Path(target)
    _make_parent(target)
    remove_stale_work_dirs(target)
    existed = os.path.lexists(target)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except OSError as err:
        raise _output_error(target, err) from None
    try:
        try:
            _write_marker(tmp, target)
            yield tmp
            (tmp / WORK_MARKER).unlink(missing_ok=True)
            _as_created(tmp, 0o777)
            if not existed:
                _place_new(tmp, target)
            else:
                if target.exists():
                    shutil.rmtree(target)
                os.replace(tmp, target)
        except OSError as err:
            if not _about(err, tmp) and not _about(err, target):
                raise
            raise _output_error(target, err) from None
        except RuntimeError as err:
            if not is_write_failure(err):
                raise
            raise _output_error(target, err) from None
        except DetpruneError as err:  # a file inside failed: name it where the user will look for it
            if str(tmp) not in str(err):
                raise
            raise type(err)(str(err).replace(str(tmp), str(target))) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


class ConcurrentWriteError(DetpruneError):
    """Another run created the output while this one was writing it."""


def _place_new(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` onto a ``target`` that did not exist when the run started, never replacing one that appeared
    since.

    Two runs given the same new output both passed their existence check; the second to finish refuses
    here instead of silently replacing the first one's result.
    """
    clash = ConcurrentWriteError(
        f"{target}: another run created this output while this one was writing it; nothing was replaced "
        "(choose another --out, or pass --exist-ok to replace it)"
    )
    if tmp.is_dir():
        if os.path.lexists(target):
            raise clash
        try:
            os.rename(tmp, target)  # onto an existing non-empty folder this fails rather than replacing it
        except OSError as err:
            if err.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise clash from None
            raise
        return
    try:
        os.link(tmp, target)  # fails if target exists: create-only, unlike rename
    except FileExistsError:
        raise clash from None
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if os.path.lexists(target):  # a file system without hard links: check, then rename
            raise clash from None
        os.replace(tmp, target)
        return
    tmp.unlink()


# --- temporaries left by killed runs -----------------------------------------------------------


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


def _temp_prefix(target: Path) -> str:
    """``.<name>.dp<pid>@<host>.``: the temporary file's own marker, so a later run can tell whose it is."""
    return f".{target.name}.dp{os.getpid()}@{_host_tag()}."


def remove_stale_temp_files(target: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of ``target`` whose name marks a process of this host that is gone."""
    from detprune.utils.checkpoints import notice

    target = Path(target)
    pattern = re.compile(re.escape(f".{target.name}.dp") + r"(\d+)@" + re.escape(_host_tag()) + r"\.")
    removed: list[Path] = []
    try:
        siblings = list(target.parent.iterdir())
    except OSError:
        return removed
    for path in siblings:
        found = pattern.match(path.name)
        if found is None or path.is_symlink() or not path.is_file() or _alive(int(found.group(1))):
            continue
        with contextlib.suppress(OSError):
            path.unlink()
            removed.append(path)
            notice(f"removed {path}, the temporary file of an interrupted run (pid {found.group(1)}) for {target}")
    return removed


# --- work folders left by killed runs ----------------------------------------------------------


def _write_marker(folder: Path, target: Path) -> None:
    record = {"pid": os.getpid(), "host": socket.gethostname(), "target": str(target.resolve())}
    (folder / WORK_MARKER).write_text(json.dumps(record) + "\n")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:  # a killed process its parent has not reaped yet is a zombie: gone for our purpose
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return True


def remove_stale_work_dirs(target: str | os.PathLike) -> list[Path]:
    """Remove the work folders of ``target`` whose marker names a process of this host that is gone."""
    from detprune.utils.checkpoints import notice

    target = Path(target)
    removed: list[Path] = []
    try:
        siblings = list(target.parent.iterdir())
    except OSError:
        return removed
    for folder in siblings:
        if not folder.name.startswith(f".{target.name}.") or folder.is_symlink() or not folder.is_dir():
            continue
        try:
            record = json.loads((folder / WORK_MARKER).read_text())
            pid, host, owner = int(record["pid"]), str(record["host"]), str(record["target"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # no marker (or not ours): never removed
        if host != socket.gethostname() or owner != str(target.resolve()) or _alive(pid):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            removed.append(folder)
            notice(f"removed {folder}, the work folder of an interrupted run (pid {pid}) for {target}")
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _as_created(path: Path, mode: int) -> None:
    if path.exists() and not stat.S_ISLNK(path.lstat().st_mode):
        os.chmod(path, mode & ~_umask())


def write_text(target: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text)
    return Path(target)


def write_bytes(target: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def save_torch(obj, target: str | os.PathLike) -> Path:
    """``torch.save`` to ``target`` atomically."""
    import torch

    with atomic_path(target) as tmp:
        torch.save(obj, tmp)
    return Path(target)
