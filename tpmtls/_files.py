"""Atomic file output: readers see the old file or the complete new one, never half of it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import UsageError


def check_writable(path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Fail before any work is done if `path` cannot be written (exists, or no directory)."""
    p = Path(path)
    if p.exists() and not overwrite:
        raise UsageError(f"{p}: already exists; remove it or pass --force to replace it")
    if not p.parent.is_dir():
        raise UsageError(f"{p}: directory {p.parent} does not exist")
    return p


def write_atomic(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> Path:
    """Write `data` to a temp file beside `path`, fsync, then rename it into place."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return p
