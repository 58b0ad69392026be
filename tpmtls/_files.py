"""Atomic file output: readers see the old file or the complete new one, never half of it;
several files appear together or not at all; key material replaced with `--force` is kept as
.bak; input files are read, bounded, with a one-line error naming them.

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
from typing import Iterable, Mapping

from .errors import TpmtlsError, UsageError


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


def check_directory(path: str | os.PathLike[str]) -> Path:
    """Fail before any work is done if directory `path` cannot be made or written in: it is a
    file, or its nearest existing ancestor is not a writable directory (probed with a temp file)."""
    d = Path(path)
    if d.exists() and not d.is_dir():
        raise UsageError(f"{_shown(d)}: exists and is not a directory")
    existing = d
    for _ in range(256):
        if existing.exists() or existing == existing.parent:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{_shown(d)}: {_shown(existing)} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".tpmtls-", suffix=".probe", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"{_shown(d)}: cannot write in {_shown(existing)}: {e.strerror or e}") from None
    return d


#: Largest input read whole (a key, a certificate, a CA bundle, a policy, a password): far above
#: any real one (every public root CA together is about 220 KB), far below what a file like
#: /dev/zero would take of memory before anything could be said about it.
MAX_INPUT = 16 << 20


def read_input(path: str | os.PathLike[str], what: str, limit: int = MAX_INPUT,
               error: type[TpmtlsError] = UsageError) -> bytes:
    """A file's bytes (at most `limit`), or a one-line `error` naming it and `what` it should have been."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise error(f"{_shown(path)}: no such {what} file") from None
    except IsADirectoryError:
        raise error(f"{_shown(path)}: is a directory, not a {what} file") from None
    except OSError as e:
        raise error(f"{_shown(path)}: cannot read {what}: {e.strerror or e}") from None
    if len(data) > limit:
        size = f"{limit >> 20} MiB" if limit >= 1 << 20 else f"{limit >> 10} KiB"
        raise error(f"{_shown(path)}: larger than {size}, not a {what} file")
    return data


def _shown(path: str | os.PathLike[str]) -> str:
    """A path as a one-line message shows it: undecodable bytes escaped, never a line break."""
    text = os.fsdecode(path) if not isinstance(path, str) else path
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\n", "\\n")


def backup(path: str | os.PathLike[str]) -> Path | None:
    """Before `--force` replaces key material: a copy of `path` as PATH.bak (PATH.bak.1, .2 … when
    taken, so no earlier key is ever lost). None when there is nothing to keep."""
    p = Path(path)
    if not p.is_file():
        return None
    for n in range(1000):
        bak = p.with_name(p.name + (".bak" if n == 0 else f".bak.{n}"))
        if not bak.exists() and not bak.is_symlink():
            break
    else:
        raise OutputError(f"{p}: 1000 backups already beside it; remove old ones first")
    try:
        write_atomic(bak, p.read_bytes(), stat.S_IMODE(p.stat().st_mode) & 0o600 or 0o600)
    except OSError as e:
        raise OutputError(f"{p}: cannot keep a backup ({bak.name}): {e.strerror or e}") from None
    return bak


def write_files(directory: str | os.PathLike[str], files: Mapping[str, tuple[bytes, int]], *, overwrite: bool = False,
                keep: Iterable[str] = (), dir_mode: int = 0o755) -> Path:
    """Write {name: (data, mode)} into `directory`, all or nothing.

    A new directory (and any missing parent) appears whole: staged beside it, then renamed. In an
    existing one, files already there are refused unless `overwrite` (those named in `keep` are
    copied to NAME.bak first), and every file is written beside its target before any is renamed
    into place: a full or read-only disk leaves the directory as it was."""
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise UsageError(f"{_shown(d)}: exists and is not a directory")
    if not d.exists():
        made = _make_parents(d.parent)
        try:
            stage = Path(tempfile.mkdtemp(prefix=f".{d.name}.", dir=d.parent))
            try:
                for name, (data, mode) in files.items():
                    write_atomic(stage / name, data, mode)
                stage.chmod(dir_mode)
                os.rename(stage, d)  # the directory appears complete or not at all
            except BaseException:
                shutil.rmtree(stage, ignore_errors=True)
                raise
        except OSError as e:
            _remove_made(made)
            raise OutputError(f"{_shown(d)}: cannot write: {e.strerror or e}") from None
        except BaseException:
            _remove_made(made)
            raise
        return d
    there = sorted(name for name in files if (d / name).exists() or (d / name).is_symlink())
    if there and not overwrite:
        listed = ", ".join(there)
        raise UsageError(f"{_shown(d)}: already holds {listed}; remove {'it' if len(there) == 1 else 'them'}, "
                         "or allow replacing (--force; key files are kept as .bak)")
    staged: list[tuple[str, Path]] = []
    try:
        for name, (data, mode) in files.items():
            fd, temp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=d)
            staged.append((name, Path(temp)))
            os.fchmod(fd, mode)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for name in keep:
            if name in files:
                backup(d / name)
        for name, staged_file in staged:
            os.replace(staged_file, d / name)
    except OSError as e:
        for _, staged_file in staged:
            _discard(str(staged_file))
        if isinstance(e, OutputError):
            raise
        raise OutputError(f"{_shown(d)}: cannot write: {e.strerror or e}") from None
    except BaseException:
        for _, staged_file in staged:
            _discard(str(staged_file))
        raise
    return d


def write_paths(files: Mapping[Path, tuple[bytes, int]], *, keep: Iterable[Path] = ()) -> None:
    """Write {path: (data, mode)} to files in any directories, all or nothing: each is written and
    synced beside its target first, and only when all are (a full disk fails here) are they renamed
    into place (`keep`: files already there copied to .bak first)."""
    staged: list[tuple[Path, Path]] = []
    try:
        for path, (data, mode) in files.items():
            fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            staged.append((path, Path(temp)))
            os.fchmod(fd, mode)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for path in keep:
            if path in files:
                backup(path)
        for path, staged_file in staged:
            os.replace(staged_file, path)
    except OSError as e:
        for _, staged_file in staged:
            _discard(str(staged_file))
        if isinstance(e, OutputError):
            raise
        where = staged[-1][0] if staged else next(iter(files), Path("."))
        raise OutputError(f"{_shown(where)}: cannot write: {e.strerror or e}") from None
    except BaseException:
        for _, staged_file in staged:
            _discard(str(staged_file))
        raise


def _make_parents(directory: Path) -> list[Path]:
    """mkdir -p, returning what it made (deepest last), so a failure can take it back."""
    missing: list[Path] = []
    p = directory
    for _ in range(256):
        if p.exists() or p == p.parent:
            break
        missing.append(p)
        p = p.parent
    made: list[Path] = []
    try:
        for m in reversed(missing):
            m.mkdir(mode=0o755)
            made.append(m)
    except OSError as e:
        _remove_made(made)
        raise OutputError(f"{_shown(directory)}: cannot create: {e.strerror or e}") from None
    return made


def _remove_made(made: list[Path]) -> None:
    for m in reversed(made):
        try:
            m.rmdir()
        except OSError:
            pass


def write_atomic(path: str | os.PathLike[str], data: bytes, mode: int = 0o600, *, keep: bool = False) -> Path:
    """Write `data` to a temp file beside `path`, fsync, then rename it into place (`keep`: a
    file already there is first copied to PATH.bak, as `--force` does for key material)."""
    p = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if keep:
            backup(p)
        os.replace(tmp, p)
    except OSError as e:
        _discard(tmp)
        if isinstance(e, OutputError):
            raise
        raise OutputError(f"{_shown(p)}: cannot write: {e.strerror or e}") from None
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
