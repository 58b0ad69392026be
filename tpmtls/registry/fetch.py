"""Blobs downloaded into a directory of files named by their digest (an OCI layout's
`blobs/sha256/`): in parallel, checked as they arrive, resumed rather than restarted.

Each blob is written to `.tmp-<pid>-<hex>` beside its target and renamed into place once
its digest matched, so a target file is always a whole, verified blob. A connection that
drops mid-blob is resumed with a Range request (client.get_blob). A pull that was killed
leaves its partial files under its PID: the next pull of the same blob into the same
place takes such a file over (its bytes are hashed again, not fetched again) and removes
the rest (leftovers.sweep_stale). Ctrl-C or SIGTERM removes this pull's partial files.

A blob already in place is not read again when the cache (blobcache.py) saw this very
file whole when it was written or last checked; any other file is hashed once. Before
anything is fetched, the free space is compared with what the missing blobs need; a full
disk is one line naming the directory and the space needed.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .._files import OutputError
from .blobcache import BlobCache, FileIdentity, Seen
from .client import RegistryClient
from .leftovers import TMP_PREFIX, adopt
from .progress import Progress

READ = 1 << 20


def blob_path(directory: Path, digest: str) -> Path:
    return directory / digest.split(":", 1)[1]


def download(client: RegistryClient, repo: str, blobs: dict[str, int | None], directory: Path, jobs: int,
             progress: Progress, cache: BlobCache, also_needed: int = 0) -> int:
    """Make `directory` hold every blob of `blobs` (digest → size from its descriptor, if
    known); returns the bytes fetched. `also_needed`: bytes the caller will write on the
    same file system afterwards (counted in the free-space check)."""
    directory.mkdir(parents=True, exist_ok=True)
    missing = {d: s for d, s in blobs.items() if not _present(blob_path(directory, d), d, cache, progress)}
    needed = sum(s or 0 for s in missing.values()) + also_needed
    _check_space(directory, needed)
    cancel = threading.Event()
    fetched = [0]
    lock = threading.Lock()

    def one(digest: str) -> None:
        n = _fetch(client, repo, digest, blob_path(directory, digest), cancel, cache)
        with lock:
            fetched[0] += n
        progress.line(f"{digest[7:19]}: Pull complete")

    with ThreadPoolExecutor(max(1, jobs), thread_name_prefix="tpmtls-pull") as pool:
        futures = [pool.submit(one, d) for d in sorted(missing)]
        try:
            for f in futures:
                f.result()
        except BaseException as e:
            cancel.set()
            for f in futures:
                f.cancel()
            client.transport.abort()  # a download blocked on a stalled registry must not hold the exit
            if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise no_space(directory, needed) from None
            raise
    return fetched[0]


def _present(target: Path, digest: str, cache: BlobCache, progress: Progress) -> bool:
    """Is `target` the whole blob `digest`? Not read when the cache saw this file so; else hashed (once)."""
    try:
        st = target.stat()
    except OSError:
        return False
    identity = FileIdentity.of(target, 0, st.st_size, st)
    seen = cache.seen(identity)
    if seen is None or seen.content != digest:
        h = hashlib.sha256()
        try:
            with open(target, "rb") as f:
                for block in iter(lambda: f.read(READ), b""):
                    h.update(block)
        except OSError:
            return False
        if "sha256:" + h.hexdigest() != digest:
            return False  # damaged: fetched again and replaced
        if FileIdentity.of(target, 0, st.st_size) == identity:  # unchanged while it was read
            cache.saw(identity, Seen(digest))
    progress.line(f"{digest[7:19]}: Already exists")
    return True


def _fetch(client: RegistryClient, repo: str, digest: str, target: Path, cancel: threading.Event,
           cache: BlobCache) -> int:
    """Download one blob into place (resuming a killed pull's partial file); returns the bytes fetched."""
    hexdigest = digest.split(":", 1)[1]
    tmp = target.parent / f"{TMP_PREFIX}{os.getpid()}-{hexdigest}"
    adopted = adopt(target.parent, TMP_PREFIX, f"-{hexdigest}", tmp)
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "r+b") as out:
            hasher, have = hashlib.sha256(), 0
            if adopted:  # what the killed pull had: hashed here, not fetched again
                for block in iter(lambda: out.read(READ), b""):
                    hasher.update(block)
                    have += len(block)
            size = client.get_blob(repo, digest, out, have=have, hasher=hasher, cancel=cancel)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        cache.saw(FileIdentity.of(target, 0, size), Seen(digest))
    except OSError:
        pass
    return size - have


def _check_space(directory: Path, needed: int) -> None:
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return
    if needed > free:
        raise no_space(directory, needed, free)


def no_space(directory: Path, needed: int, free: int | None = None) -> OutputError:
    if free is None:
        try:
            free = shutil.disk_usage(directory).free
        except OSError:
            free = 0
    return OutputError(f"{directory}: not enough space: this pull needs {human(needed)} there and "
                       f"{human(free)} is free; free some space or pull to another file system")


def human(n: int) -> str:
    """1234567 → '1.2 MB' (decimal units, as docker prints sizes)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    raise AssertionError("unreachable")  # pragma: no cover


__all__ = ["blob_path", "download", "human", "no_space"]
