"""What a push sends: blobs (regions of files, compressed on the fly where needed) and the
image they make; the image formats are read in oci.py, archive.py and images.py.

Blobs are regions of files (a layout directory or an uncompressed tar), read in 1 MiB
pieces, so memory stays flat whatever the layer size. `docker save` layers are plain
tars: they are gzipped on the fly while uploading, with a deterministic gzip (fixed
header, fixed level) so a resumed upload regenerates exactly the same bytes, and a
cache maps their uncompressed digest to the compressed one for later pushes.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import types
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from ..errors import ImageError

READ = 1 << 20
SAMPLE = 1 << 20  # how much of a layer decides whether it is worth compressing

_deflate: types.ModuleType
try:  # ISA-L (python-isal): ~13x zlib-6's speed per core for ~13 % more bytes; docs/performance.md
    from isal import isal_zlib as _deflate

    GZIP_LEVEL = 2  # ISA-L's levels are 0-3; 2 runs ~1.6x level 3's speed for ~1.6 % more bytes
    COMPRESSOR = f"isal {getattr(__import__('isal'), '__version__', '?')} level {GZIP_LEVEL}"
except ImportError:  # pragma: no cover - isal is a dependency; plain zlib still works, slower
    _deflate = zlib
    GZIP_LEVEL = 6
    COMPRESSOR = f"zlib {zlib.ZLIB_VERSION} level {GZIP_LEVEL}"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
CONFIG_TYPES = (DOCKER_CONFIG, "application/vnd.oci.image.config.v1+json")
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)


class Source(ABC):
    """A blob's bytes, readable again from the start (an upload resumes by re-reading
    and hashing up to where the registry's copy ends)."""

    size: int | None  # None when unknown before reading (compressed on the fly)

    @abstractmethod
    def chunks(self) -> Iterator[bytes]:
        """The bytes, from the start, in pieces."""


class FileRegion(Source):
    """`size` bytes of `path` from `start`; `read` counts the bytes read so far (a push reports it)."""

    size: int

    def __init__(self, path: Path, start: int, size: int) -> None:
        self.path, self.start, self.size = path, start, size
        self.read = 0

    def chunks(self) -> Iterator[bytes]:
        with open(self.path, "rb", buffering=0) as f:  # unbuffered: no read-ahead past the region
            f.seek(self.start)
            left = self.size
            while left > 0:
                data = f.read(min(READ, left))
                if not data:
                    raise ImageError(f"{self.path}: ends early (truncated archive?)")
                left -= len(data)
                self.read += len(data)
                yield data

    def head(self, n: int) -> bytes:
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self.start)
            data = f.read(min(n, self.size))
        self.read += len(data)
        return data

    def sha256(self) -> str:
        h = hashlib.sha256()
        for data in self.chunks():
            h.update(data)
        return "sha256:" + h.hexdigest()


class VerifiedRegion(Source):
    """A blob read from a file, hashed as it is read: content that does not match the
    digest its descriptor names fails at its end, before the upload is committed."""

    def __init__(self, inner: FileRegion, digest: str, what: str) -> None:
        self.inner, self.digest, self.what = inner, digest, what
        self.size = inner.size

    def chunks(self) -> Iterator[bytes]:
        h = hashlib.sha256()
        for data in self.inner.chunks():
            h.update(data)
            yield data
        if "sha256:" + h.hexdigest() != self.digest:
            raise ImageError(f"{self.what} does not match its digest {self.digest} "
                             f"(content is sha256:{h.hexdigest()}); nothing was tagged")


class GzipSource(Source):
    """A plain tar, gzip-compressed while it is read (deterministic output).

    Compressed with ISA-L (`isal_zlib`, level 2): ~380 MB/s per core on real files where
    zlib level 6 does ~30, for ~13 % more bytes than it (docs/performance.md, "Layer compression").
    Data with nothing to find (layers of already-compressed files) is not searched: the
    layer's first MiB is tried at level 1, and if it does not shrink by 5 % the layer is
    stored in gzip framing (zlib level 0, ~350 MB/s). The choice and the bytes depend only
    on the input (and the library version), so a resumed upload regenerates the same bytes.
    """

    def __init__(self, inner: FileRegion, diff_id: str | None = None, what: str = "layer",
                 verified: Callable[[], None] | None = None) -> None:
        self.inner = inner
        self.size = None
        self.level: int | None = None
        self.diff_id, self.what = diff_id, what
        self.verified = verified  # called once a whole pass matched the diff_id

    def _choose_level(self) -> int:
        if self.level is None:
            sample = next(iter(self.inner.chunks()), b"")[:SAMPLE]
            packed = zlib.compress(sample, 1) if sample else b""
            self.level = 0 if sample and len(packed) > 0.95 * len(sample) else GZIP_LEVEL
        return self.level

    def chunks(self) -> Iterator[bytes]:
        # wbits 31: gzip wrapper with mtime 0 and no name, so the bytes depend only on the input
        level = self._choose_level()
        z = zlib.compressobj(0, zlib.DEFLATED, 31) if level == 0 else _deflate.compressobj(level, zlib.DEFLATED, 31)
        h = hashlib.sha256()
        for data in self.inner.chunks():
            h.update(data)
            out = z.compress(data)
            if out:
                yield out
        tail = z.flush()
        # the last bytes are held back until the content is known to be what the config says,
        # so a layer that does not match its diff_id never completes an upload
        if self.diff_id is not None and "sha256:" + h.hexdigest() != self.diff_id:
            raise ImageError(f"{self.what} does not match its diff_id {self.diff_id} in the image config "
                             f"(content is sha256:{h.hexdigest()}); nothing was tagged")
        if self.verified is not None and self.diff_id is not None:
            self.verified()
        yield tail


@dataclass(eq=False)
class Blob:
    """One blob to push. `digest`/`size` are None for layers compressed on the fly."""

    source: Source
    media_type: str
    digest: str | None
    size: int | None
    diff_id: str | None = None  # uncompressed digest (cache key for compressed-on-the-fly layers)
    name: str = ""  # for progress lines
    # run by the push worker before anything else (a streamed layer learns its content digest)
    prepare: Callable[["Blob"], None] | None = None
    # run before the registry's copy stands in for this blob (its bytes are not sent): checks
    # the local content against what it claims, reading it only when nothing vouches for it
    check: Callable[[], None] | None = None

    def bytes_read(self) -> int:
        """Bytes of this blob's file read so far."""
        inner = getattr(self.source, "inner", self.source)
        return int(getattr(inner, "read", 0))


@dataclass
class Image:
    """What a push sends: blobs, then manifests built from what the blobs became."""

    description: str
    blobs: list[Blob]
    # (uploaded digests/sizes by blob) -> [(manifest bytes, media type)], children first, top last
    render: Callable[[dict[Blob, tuple[str, int]]], list[tuple[bytes, str]]]
    cleanup: Callable[[], None] = field(default=lambda: None)
    streamed: int = 0  # bytes read from a `docker save` stream to make it


def docker_manifest(config: str, config_size: int, layers: list[tuple[str, int]]) -> bytes:
    """A Docker v2 schema 2 manifest of gzipped layers ((digest, size) each), byte for byte the
    same for the same image whichever way it was pushed (archive, daemon stream, from the cache)."""
    manifest = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG, "size": config_size, "digest": config},
        "layers": [{"mediaType": DOCKER_LAYER_GZIP, "size": size, "digest": digest} for digest, size in layers],
    }
    return json.dumps(manifest, indent=3).encode()


# ---- files: a directory or an uncompressed tar ----------------------------------------


class _HeadersOnly:
    """A tar file as tarfile's header scan sees it, reading nothing of the members' data.

    Unbuffered (no read-ahead past a header into the layer behind it), and the one byte
    tarfile reads at the end of each member only to learn the file goes on (`TarFile.next`:
    seek to the member's end - 1, read(1)) is answered from the file's size instead."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.size = os.fstat(raw.fileno()).st_size

    def read(self, n: int = -1) -> bytes:
        pos = self.raw.tell()
        if n == 1 and pos < self.size:  # the truncation probe: the byte exists, its value is not used
            self.raw.seek(1, os.SEEK_CUR)
            return b"\0"
        return self.raw.read(n)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()


class ImageFiles:
    """The files of an image: a directory (OCI layout) or an uncompressed tar (read by its headers)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.members: dict[str, tarfile.TarInfo] = {}
        if path.is_file():
            try:  # headers only (a re-push reads no layer byte): see _HeadersOnly
                with open(path, "rb", buffering=0) as raw, \
                        tarfile.open(fileobj=_HeadersOnly(raw), mode="r:") as tar:  # type: ignore[call-overload]
                    self.members = {m.name.lstrip("./"): m for m in tar.getmembers() if m.isfile()}
            except tarfile.ReadError:
                raise ImageError(f"{path}: not an uncompressed tar archive (gunzip it first if compressed)") from None
            except OSError as e:
                raise ImageError(f"{path}: cannot read: {e.strerror or e}") from None
        elif not path.is_dir():
            raise ImageError(f"{path}: no such file or directory")

    def region(self, name: str) -> FileRegion:
        if self.members:
            member = self.members.get(name)
            if member is None:
                raise ImageError(f"{self.path}: has no {name}")
            return FileRegion(self.path, member.offset_data, member.size)
        target = self.path / name
        if not target.is_file():
            raise ImageError(f"{self.path}: has no {name}")
        return FileRegion(target, 0, target.stat().st_size)

    def has(self, name: str) -> bool:
        return name in self.members if self.members else (self.path / name).is_file()

    def read(self, name: str, limit: int = 16 << 20) -> bytes:
        region = self.region(name)
        if region.size > limit:
            raise ImageError(f"{self.path}: {name} is implausibly large for metadata")
        return b"".join(region.chunks())

    def json(self, name: str) -> object:
        try:
            return json.loads(self.read(name))
        except ValueError:
            raise ImageError(f"{self.path}: {name} is not valid JSON") from None
