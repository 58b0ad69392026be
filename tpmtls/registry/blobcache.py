"""What earlier pushes learnt, so a re-push of an unchanged image reads no layer bytes.

`$XDG_CACHE_HOME/tpmtls/blobs.json` (mode 0600), four tables, each bounded:

* `layers`: per registry and repository, an uncompressed layer's digest (diff_id) →
  the compressed blob (digest, size) the registry holds for it. Recorded only once the
  registry has that blob in that repository (upload committed, HEAD 200, mount 201).
* `blobs`: per registry, a blob digest → repositories it was seen in (a cross-repository
  mount source).
* `files`: a region of a file, by identity (device, inode, size, mtime, ctime, offset,
  length) → the digest of its content (a layer's diff_id, a pulled blob's digest; for a
  layer stored compressed, also the digest and size of the compressed form). Recorded only
  after every byte of the region was read and matched; a file that changed in any way
  (even with its mtime put back: the ctime moves) is another identity, so it is read and
  verified again.
* `images`: a daemon image id → its config's digest and size and its diff_ids, recorded
  when the config was read from `docker save`; so a re-push from the daemon needs no save.

The integrity promise: a layer is checked against its diff_id whenever its bytes are
read, and the cache never vouches for bytes it did not see. A wrong or stale entry costs
a HEAD or a failed mount, never a wrong push: the registry verifies every digest, and a
manifest only names blobs the registry has. The file is replaced atomically (never half
written) and merged with what concurrent pushes saved; an unreadable one is empty.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VERSION = 2
#: Bounds per table (oldest entries go first); a few hundred images' worth of layers.
LIMITS = {"layers": 512, "blobs": 64, "files": 4096, "images": 512}
PER_TABLE = 4096  # entries inside one repository's or registry's table
MOUNT_SOURCES = 8  # repositories remembered per blob: a few places are enough to mount from


@dataclass(frozen=True)
class FileIdentity:
    """A region of a file as it is now: any change to the file gives another identity."""

    key: str

    @classmethod
    def of(cls, path: Path, start: int, length: int, st: os.stat_result | None = None) -> FileIdentity:
        st = st or os.stat(path)
        return cls(f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{start}:{length}")


@dataclass(frozen=True)
class Seen:
    """A file region read and verified earlier: the digest of its content (a layer's diff_id);
    for a layer stored gzipped, `packed`/`packed_size` are the digest and size of the region itself."""

    content: str
    packed: str | None = None
    packed_size: int | None = None


@dataclass(frozen=True)
class DaemonImage:
    """A daemon image's config (digest, size) and its layers' diff_ids, as read from `docker save`."""

    config: str
    size: int
    diff_ids: tuple[str, ...]


def default_path() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "tpmtls" / "blobs.json"


class BlobCache:
    """The push cache (see the module docstring); thread-safe, saved with `save()`."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_path()
        self._lock = threading.Lock()
        self._tables: dict[str, dict[str, Any]] = _read(self.path)
        self._dirty = False

    # -- layers and blobs the registry holds ---------------------------------------------

    def lookup(self, registry: str, repo: str, diff_id: str) -> tuple[str, int] | None:
        """The compressed (digest, size) for `diff_id`: this repository's first, then any
        other of the registry (a mount candidate), then any registry's (a guess to HEAD)."""
        layers = self._tables["layers"]
        with self._lock:
            for key in [f"{registry}/{repo}"] + [k for k in layers if k.startswith(f"{registry}/")] + list(layers):
                entry = layers.get(key, {}).get(diff_id)
                if entry:
                    return str(entry[0]), int(entry[1])
        return None

    def where(self, registry: str, digest: str) -> list[str]:
        """Repositories of `registry` where `digest` was seen (mount sources)."""
        with self._lock:
            return list(self._tables["blobs"].get(registry, {}).get(digest, []))

    def record(self, registry: str, repo: str, digest: str, size: int, diff_id: str | None = None) -> None:
        """The registry holds `digest` in `repo` (and it is the compressed form of `diff_id`)."""
        with self._lock:
            if diff_id:
                _put(self._tables["layers"], f"{registry}/{repo}", {diff_id: [digest, size]})
                _trim(self._tables["layers"][f"{registry}/{repo}"], PER_TABLE)
            repos = self._tables["blobs"].setdefault(registry, {}).setdefault(digest, [])
            if repo in repos:
                repos.remove(repo)
            repos.append(repo)
            del repos[:-MOUNT_SOURCES]
            self._dirty = True

    # -- file regions read before ------------------------------------------------------------

    def seen(self, identity: FileIdentity) -> Seen | None:
        """What the region held when it was last read whole, if it has not changed since."""
        with self._lock:
            entry = self._tables["files"].get(identity.key)
        if not isinstance(entry, list) or len(entry) != 3:
            return None
        return Seen(str(entry[0]), str(entry[1]) if entry[1] else None, int(entry[2]) if entry[1] else None)

    def saw(self, identity: FileIdentity, seen: Seen) -> None:
        """Every byte of the region was just read and hashed to `seen` (call it only then)."""
        with self._lock:
            _put(self._tables["files"], identity.key, [seen.content, seen.packed or "", seen.packed_size or 0])
            self._dirty = True

    # -- daemon images -----------------------------------------------------------------------

    def daemon_image(self, image_id: str) -> DaemonImage | None:
        with self._lock:
            entry = self._tables["images"].get(image_id)
        if not entry:
            return None
        return DaemonImage(str(entry[0]), int(entry[1]), tuple(entry[2]))

    def saw_daemon_image(self, image_id: str, image: DaemonImage) -> None:
        with self._lock:
            _put(self._tables["images"], image_id, [image.config, image.size, list(image.diff_ids)])
            self._dirty = True

    # -- the file ----------------------------------------------------------------------------

    def save(self) -> None:
        """Write atomically (temp file + rename), merged with what other pushes saved meanwhile.

        Not fsynced: after a crash the file may be old or empty, and an empty cache only
        costs speed (a push reads and verifies what it cannot vouch for)."""
        with self._lock:
            if not self._dirty:
                return
            merged = _read(self.path)
            for name, table in self._tables.items():
                for key, value in table.items():
                    if name == "blobs":
                        _merge_blobs(merged[name], key, value)
                    else:
                        _put(merged[name], key, value)
                _trim(merged[name], LIMITS[name])
            self._tables = merged
            data = json.dumps({"version": VERSION, **merged}, separators=(",", ":")).encode()
            tmp = None
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=".blobs.", suffix=".tmp", dir=self.path.parent)
                with os.fdopen(fd, "wb") as f:
                    os.fchmod(f.fileno(), 0o600)
                    f.write(data)
                os.replace(tmp, self.path)
                tmp = None
                self._dirty = False
            except OSError:
                pass  # a cache we cannot write only costs speed next time
            finally:
                if tmp is not None:
                    Path(tmp).unlink(missing_ok=True)


def _empty() -> dict[str, dict[str, Any]]:
    return {name: {} for name in LIMITS}


def _read(path: Path) -> dict[str, dict[str, Any]]:
    """The tables on disk; empty ones for a missing, unreadable, foreign or older file."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return _empty()
    if not isinstance(data, dict) or data.get("version") != VERSION:
        return _empty()
    tables = _empty()
    for name in tables:
        value = data.get(name)
        if isinstance(value, dict):
            tables[name] = value
    return tables


def _put(table: dict[str, Any], key: str, value: Any) -> None:
    """Insert or refresh `key` (dict values merged) as the newest entry."""
    old = table.pop(key, None)
    if isinstance(old, dict) and isinstance(value, dict):
        old.update(value)
        value = old
    table[key] = value


def _merge_blobs(table: dict[str, Any], registry: str, digests: dict[str, list[str]]) -> None:
    mine = table.setdefault(registry, {})
    for digest, repos in digests.items():
        known = [r for r in mine.pop(digest, []) if r not in repos] + list(repos)
        mine[digest] = known[-MOUNT_SOURCES:]
    _trim(mine, PER_TABLE)


def _trim(table: dict[str, Any], limit: int) -> None:
    for key in list(table)[: max(0, len(table) - limit)]:
        del table[key]


__all__ = ["BlobCache", "DaemonImage", "FileIdentity", "Seen", "default_path"]
