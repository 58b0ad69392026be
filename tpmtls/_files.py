"""Atomic file output: readers see the old file or the complete new one, never half of it;
and input files read with a one-line error naming them.

Output problems (a directory, a read-only or full file system, an output that is one of
the command's own inputs) are found before any work is done where possible, and are one
line (`OutputError`, a UsageError and an OSError) when they happen anyway.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable

from .errors import UsageError


class OutputError(UsageError, OSError):
    """An output file cannot be written (also an OSError, for callers that treat it as one)."""


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def check_writable(path: str | os.PathLike[str], overwrite: bool = False,
                   inputs: Iterable[str | os.PathLike[str] | None] = ()) -> Path:
    """Fail before any work is done if `path` cannot be written: it exists (without
    `overwrite`), is a directory, is one of `inputs`, or its directory is missing or
    not writable (probed with a real temp file, so a read-only file system shows too)."""
    p = Path(path)
    for source in inputs:
        if source is not None and not str(source).startswith("handle:") and _same(p, Path(source)):
            raise UsageError(f"{p}: is also an input of this command ({source}); write the output to another file "
                             "(allowing overwrites does not change that)")
    if p.is_dir():
        raise UsageError(f"{p}: is a directory; name the file to write")
    if p.exists() and not overwrite:
        raise UsageError(f"{p}: already exists; remove it, or allow replacing it (--force; overwrite=True in Python)")
    if not p.parent.is_dir():
        raise UsageError(f"{p}: directory {p.parent} does not exist")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".probe", dir=p.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"{p}: cannot write in {p.parent}: {e.strerror or e}") from None
    return p


def read_input(path: str | os.PathLike[str], what: str) -> bytes:
    """A file's bytes, or a one-line UsageError naming it and `what` it should have been."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such {what} file") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory, not a {what} file") from None
    except OSError as e:
        raise UsageError(f"{path}: cannot read {what}: {e.strerror}") from None


def write_atomic(path: str | os.PathLike[str], data: bytes, mode: int = 0o600, group: int | None = None) -> Path:
    """Write `data` to a temp file beside `path`, fsync, then rename it into place; `group`
    (a gid) owns it from the start, so the file is never readable by anyone it should not be."""
    p = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
        if group is not None:
            os.fchown(fd, -1, group)
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except OSError as e:
        _discard(tmp)
        if isinstance(e, OutputError):
            raise
        raise OutputError(f"{p}: cannot write: {e.strerror or e}") from None
    except BaseException:
        _discard(tmp)
        raise
    return p


def _discard(tmp: str | None) -> None:
    if tmp is not None:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
