"""What a ``.pt`` file is, checked before anything in it is unpickled.

torch reads a zip checkpoint with its own reader (miniz), the safety scan of
:mod:`detprune.utils.checkpoints` must see exactly the bytes torch will unpickle. Archives two
readers could read differently are refused outright: repeated member names, members outside
torch's layout, data before the first entry, a zip that only Python's reader finds (torch decides
by the first four bytes). Every member's CRC is checked, so flipped tensor bytes are not loaded
as weights. A non-zip file must begin as torch's legacy format does.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

from detprune.errors import BadInputError

ZIP_MAGIC = b"PK\x03\x04"
# torch's legacy format starts with the pickled magic number 0x1950a86a20f9469cfc6c (protocol 2, LONG1)
LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"
# members torch.save writes under the archive's one top-level folder
_MEMBER = re.compile(r"(data\.pkl|byteorder|version|\.format_version|\.storage_alignment|\.data/version"
                     r"|\.data/serialization_id|data/\d+)")
_CHUNK = 1 << 20


def check_torch_file(path: Path, what: str) -> bool:
    """Refuse a file torch would not read as ``torch.save`` wrote it; True for a zip archive, False for legacy."""
    try:
        with path.open("rb") as handle:
            head = handle.read(len(LEGACY_MAGIC))
    except OSError as exc:
        raise BadInputError(f"{path}: cannot read the {what} file ({exc.strerror})") from None
    if not head:
        raise _bad(path, what, "the file is empty (truncated or corrupt)")
    if head.startswith(ZIP_MAGIC):
        _check_zip(path, what)
        return True
    if head == LEGACY_MAGIC:
        return False
    if zipfile.is_zipfile(path):  # a zip behind other bytes: torch would unpickle the bytes, the scan read the zip
        raise _bad(path, what, "data precedes the zip archive, so torch would read it as a plain pickle")
    raise _bad(
        path,
        what,
        "it is truncated or corrupt: not a torch.save file (neither a torch zip archive nor torch's legacy format)",
    )


def _check_zip(path: Path, what: str) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            names = [info.filename for info in infos]
            repeated = sorted({name for name in names if names.count(name) > 1})
            if repeated:
                raise _bad(path, what, f"the archive holds {repeated[0]} more than once")
            prefixes = {name.split("/", 1)[0] for name in names}
            if len(prefixes) != 1 or not names:
                raise _bad(path, what, "not torch's archive layout (one top-level folder)")
            prefix = prefixes.pop()
            odd = [name for name in names if not _MEMBER.fullmatch(name[len(prefix) + 1:])]
            if odd:
                raise _bad(path, what, f"not torch's archive layout (unexpected member {odd[0]})")
            if f"{prefix}/data.pkl" not in names:
                raise _bad(path, what, "not torch's archive layout (no data.pkl)")
            if infos[0].header_offset != 0:  # Python's reader skipped bytes that torch's would not
                raise _bad(path, what, "bytes before the archive's first entry")
            for info in infos:  # reading to the end verifies the CRC
                with archive.open(info) as member:
                    while member.read(_CHUNK):
                        pass
    except BadInputError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise _bad(path, what, f"the file is truncated or corrupt ({first})") from None


def _bad(path: Path, what: str, why: str) -> BadInputError:
    return BadInputError(f"{path}: cannot read the {what} file: {why}")
