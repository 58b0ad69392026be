"""Atomic file output: readers see the old file or the complete new one, never half of it;
several files appear together or not at all; key material replaced with `--force` is kept as
.bak; input files are read, bounded, with a one-line error naming them.

Output problems (a directory, a read-only or full file system, an output that is one of
the command's own inputs) are found before any work is done where possible, and are one
line (`OutputError`, a UsageError and an OSError) when they happen anyway.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

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


def read_bounded(path: str | os.PathLike[str]) -> bytes:
    """A file's bytes, read bounded like every input (a larger file is a ValueError). OSError
    and ValueError are left to the caller, whose one line says what the file should have been."""
    with open(path, "rb") as f:
        data = f.read(MAX_INPUT + 1)
    if len(data) > MAX_INPUT:
        raise ValueError(f"larger than {MAX_INPUT >> 20} MiB")
    return data


def read_json(path: str | os.PathLike[str]) -> Any:
    """The JSON document in `path`, read as `read_bounded` does (errors left to the caller)."""
    return json.loads(read_bounded(path))


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
    bak = _backup_path(p)
    try:
        write_atomic(bak, p.read_bytes(), stat.S_IMODE(p.stat().st_mode) & 0o600 or 0o600)
    except OSError as e:
        raise OutputError(f"{p}: cannot keep a backup ({bak.name}): {e.strerror or e}") from None
    return bak


def _backup_path(p: Path) -> Path:
    """The first of PATH.bak, PATH.bak.1, .2 … that is free."""
    for n in range(1000):
        bak = p.with_name(p.name + (".bak" if n == 0 else f".bak.{n}"))
        if not bak.exists() and not bak.is_symlink():
            return bak
    raise OutputError(f"{p}: 1000 backups already beside it; remove old ones first")


def write_files(directory: str | os.PathLike[str], files: Mapping[str, tuple[bytes, int]], *, overwrite: bool = False,
                keep: Iterable[str] = (), dir_mode: int = 0o755, group: int | None = None) -> Path:
    """Write {name: (data, mode)} into `directory`, all or nothing.

    A new directory (and any missing parent) appears whole: staged beside it, then renamed. In an
    existing one, files already there are refused unless `overwrite` (those named in `keep` are
    kept as NAME.bak), and the new files (and backups) replace the old ones together
    (`replace_together`): a reader never pairs a new certificate with an old key, and a full or
    read-only disk leaves the directory as it was. `group` (a gid) owns the new files."""
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise UsageError(f"{_shown(d)}: exists and is not a directory")
    if not d.exists():
        made = _make_parents(d.parent)
        try:
            stage = Path(tempfile.mkdtemp(prefix=f".{d.name}.", dir=d.parent))
            try:
                for name, (data, mode) in files.items():
                    write_atomic(stage / name, data, mode, group)
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
    new = dict(files)
    for name in keep:  # the replaced key's copy goes in with the new files, in the same swap
        old = d / name
        if name in files and old.is_file():
            new[_backup_path(old).name] = (old.read_bytes(), 0o600)
    replace_together(d, new, group)
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


def write_atomic(path: str | os.PathLike[str], data: bytes, mode: int = 0o600, group: int | None = None, *,
                 keep: bool = False) -> Path:
    """Write `data` to a temp file beside `path`, fsync, then rename it into place. `group` (a gid)
    owns it from the start, so the file is never readable by anyone it should not be; `keep`: a
    file already there is first copied to PATH.bak, as `--force` does for key material."""
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


def replace_together(directory: str | os.PathLike[str], files: dict[str, tuple[bytes, int]],
                     group: int | None = None) -> Path:
    """Give `directory` new contents for several files at once: a reader sees all old or all new.

    Needed where two files must match (a certificate and its key): a reader between two
    renames would pair the new certificate with the old key. When only one file changes, a
    rename of that file is enough. Otherwise a copy of the directory with the new files is
    made beside it and swapped in with one renameat2(RENAME_EXCHANGE) (Linux 3.15; on a file
    system without it, the files are replaced one by one, the key-like 0600 ones last).
    Other files in the directory, and the owners of replaced files, are kept (`group`, a gid:
    the new files belong to it instead). A directory that does not exist yet appears complete
    (made beside it, then renamed into place).
    """
    d = Path(directory)
    if not d.exists():
        return _appear(d, files, group)
    changed = {name: v for name, v in files.items() if _content(d / name) != v[0]}
    if len(changed) <= 1:
        for name, (data, mode) in changed.items():
            _owned(d / name, write_atomic(d / name, data, mode, group), group)
        return d
    stage = Path(tempfile.mkdtemp(prefix=f".{d.name}.", dir=d.parent))
    try:
        st = os.stat(d)
        for entry in d.iterdir():
            if entry.is_file() and entry.name not in changed:
                shutil.copy2(entry, stage / entry.name)
                _keep_owner(entry, stage / entry.name)
        for name, (data, mode) in changed.items():
            _owned(d / name, write_atomic(stage / name, data, mode, group), group)
        os.chmod(stage, stat.S_IMODE(st.st_mode))
        if os.geteuid() == 0:
            os.chown(stage, st.st_uid, st.st_gid)
        if _exchange(stage, d):
            return d
        for name, (data, mode) in sorted(changed.items(), key=lambda item: item[1][1] == 0o600):
            _owned(d / name, write_atomic(d / name, data, mode, group), group)
        return d
    except OSError as e:
        if isinstance(e, OutputError):
            raise
        raise OutputError(f"{d}: cannot write: {e.strerror or e}") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # after the swap, the old contents


def _appear(d: Path, files: dict[str, tuple[bytes, int]], group: int | None = None) -> Path:
    stage = None
    try:
        d.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{d.name}.", dir=d.parent))
        for name, (data, mode) in files.items():
            write_atomic(stage / name, data, mode, group)
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


def _owned(old: Path, new: Path, group: int | None) -> None:
    """A new file's owner: the group given, else the replaced file's owner and group."""
    if group is None:
        _keep_owner(old, new)


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
