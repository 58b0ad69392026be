"""Atomic file output: readers see the old file or the complete new one, never half of it;
and input files read with a one-line error naming them.

Output problems (a directory, a read-only or full file system, an output that is one of
the command's own inputs) are found before any work is done where possible, and are one
line (`OutputError`, a UsageError and an OSError) when they happen anyway.
"""

from __future__ import annotations

import os
import shutil
import stat
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


def write_atomic(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> Path:
    """Write `data` to a temp file beside `path`, fsync, then rename it into place."""
    p = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
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


def replace_together(directory: str | os.PathLike[str], files: dict[str, tuple[bytes, int]]) -> Path:
    """Give `directory` new contents for several files at once: a reader sees all old or all new.

    Needed where two files must match (a certificate and its key): a reader between two
    renames would pair the new certificate with the old key. When only one file changes, a
    rename of that file is enough. Otherwise a copy of the directory with the new files is
    made beside it and swapped in with one renameat2(RENAME_EXCHANGE) (Linux 3.15; on a file
    system without it, the files are replaced one by one, the key-like 0600 ones last).
    Other files in the directory, and the owners of replaced files, are kept. A directory that
    does not exist yet appears complete (made beside it, then renamed into place).
    """
    d = Path(directory)
    if not d.exists():
        return _appear(d, files)
    changed = {name: v for name, v in files.items() if _content(d / name) != v[0]}
    if len(changed) <= 1:
        for name, (data, mode) in changed.items():
            _keep_owner(d / name, write_atomic(d / name, data, mode))
        return d
    stage = Path(tempfile.mkdtemp(prefix=f".{d.name}.", dir=d.parent))
    try:
        st = os.stat(d)
        for entry in d.iterdir():
            if entry.is_file() and entry.name not in changed:
                shutil.copy2(entry, stage / entry.name)
                _keep_owner(entry, stage / entry.name)
        for name, (data, mode) in changed.items():
            _keep_owner(d / name, write_atomic(stage / name, data, mode))
        os.chmod(stage, stat.S_IMODE(st.st_mode))
        if os.geteuid() == 0:
            os.chown(stage, st.st_uid, st.st_gid)
        if _exchange(stage, d):
            return d
        for name, (data, mode) in sorted(changed.items(), key=lambda item: item[1][1] == 0o600):
            _keep_owner(d / name, write_atomic(d / name, data, mode))
        return d
    except OSError as e:
        if isinstance(e, OutputError):
            raise
        raise OutputError(f"{d}: cannot write: {e.strerror or e}") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # after the swap, the old contents


def _appear(d: Path, files: dict[str, tuple[bytes, int]]) -> Path:
    stage = None
    try:
        d.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{d.name}.", dir=d.parent))
        for name, (data, mode) in files.items():
            write_atomic(stage / name, data, mode)
        stage.chmod(0o755)
        os.rename(stage, d)
        stage = None
    except OSError as e:
        if isinstance(e, OutputError):
            raise
        raise OutputError(f"{d}: cannot write: {e.strerror or e}") from None
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
    return d


def _content(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _keep_owner(old: Path, new: Path) -> None:
    """A replaced file keeps its owner and group (a group-readable key for a service user, say)."""
    if os.geteuid() != 0:
        return
    try:
        st = os.stat(old)
    except FileNotFoundError:
        return
    os.chown(new, st.st_uid, st.st_gid)


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directory entries atomically (renameat2 RENAME_EXCHANGE); False where unsupported."""
    import ctypes
    import errno

    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EXDEV, errno.EBUSY):  # a mount point: one by one
        return False
    raise OSError(err, os.strerror(err), str(b))
