"""A daemon image pushed while `docker save` still streams it.

`docker save` (legacy format) writes each layer as `<id>/layer.tar`, then the config, then
`manifest.json`. The stream is copied to a temp file (so every blob stays re-readable for
resumed uploads) and parsed as it goes: as soon as a layer is complete in the file it is
handed to the push, which hashes, compresses and uploads it while the daemon is still
writing the next one. Layers are cached under the digest of their *actual* content, and
the config's diff_ids are checked against those before the manifest goes (a mismatch tags
nothing). A save in OCI format (docker 25+) is read once complete, as a docker-archive.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import posixpath
import re
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import ImageError
from .leftovers import SHARED_TMP_MIN_AGE, sweep_stale
from .sources import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    Blob,
    FileRegion,
    GzipSource,
    Image,
    VerifiedRegion,
    docker_archive,
)

_LAYER = re.compile(r"^[0-9a-f]{64}/layer\.tar$")


class _Tee:
    """A read()-able view of the save stream that writes every byte to the temp file as it passes.

    Pieces are handed out by offset into the current chunk (no copying of what is left)."""

    def __init__(self, chunks: Iterator[bytes], fd: int) -> None:
        self._chunks: Iterator[bytes] | None = chunks
        self._fd = fd
        self._chunk = memoryview(b"")
        self.total = 0
        self.watch: list[tuple[int, int, Any]] = []  # (start, end, sha256): hash these stream bytes as they pass

    def read(self, n: int = -1) -> bytes:
        parts: list[memoryview] = []
        want = n if n >= 0 else 1 << 62
        while want > 0:
            if not self._chunk:
                data = next(self._chunks, b"") if self._chunks is not None else b""
                if not data:
                    self._chunks = None
                    break
                self._chunk = memoryview(data)
            piece, self._chunk = self._chunk[:want], self._chunk[want:]
            parts.append(piece)
            want -= len(piece)
        pos = self.total
        for piece in parts:
            for start, end, hasher in self.watch:
                lo, hi = max(start, pos), min(end, pos + len(piece))
                if lo < hi:
                    hasher.update(piece[lo - pos:hi - pos])
            pos += len(piece)
            while piece:
                piece = piece[os.write(self._fd, piece):]
        out = b"".join(parts)
        self.total += len(out)
        self.watch = [w for w in self.watch if w[1] > self.total]
        return out

    def hash_from(self, start: int, size: int) -> Any:
        """A sha256 of stream bytes [start, start+size): what already passed (tarfile reads ahead)
        is read back from the file, the rest is hashed as it passes."""
        hasher = hashlib.sha256()
        pos, end = start, start + size
        while pos < min(self.total, end):
            data = os.pread(self._fd, min(1 << 20, min(self.total, end) - pos), pos)
            if not data:
                break
            hasher.update(data)
            pos += len(data)
        if pos < end:
            self.watch.append((pos, end, hasher))
        return hasher


def _prepare(blob: Blob, what: str) -> None:
    """In a push worker: a layer that came compressed is pushed as it is (its digests learnt here);
    a plain one already has the digest of its content (hashed as it streamed past)."""
    assert isinstance(blob.source, GzipSource)
    region = blob.source.inner
    if region.head(2) == b"\x1f\x8b":  # a compressed layer: push as it is
        import hashlib
        import zlib

        packed, plain, z = hashlib.sha256(), hashlib.sha256(), zlib.decompressobj(31)
        for data in region.chunks():
            packed.update(data)
            plain.update(z.decompress(data))
        blob.diff_id = "sha256:" + plain.hexdigest()
        blob.digest, blob.size = "sha256:" + packed.hexdigest(), region.size
        blob.source = VerifiedRegion(region, blob.digest, what)
    elif blob.diff_id is None:
        blob.diff_id = region.sha256()


def stream_daemon_image(name: str, image: object, on_layer: Callable[[Blob], None]) -> Image:
    """Save daemon image `name` to a temp file, calling `on_layer` for each layer as it completes."""
    sweep_stale(Path(tempfile.gettempdir()), "tpmtls-save-", SHARED_TMP_MIN_AGE)
    fd, tmp_name = tempfile.mkstemp(prefix=f"tpmtls-save-{os.getpid()}-", suffix=".tar")
    tmp = Path(tmp_name)

    def cleanup() -> None:
        tmp.unlink(missing_ok=True)

    layers: dict[str, Blob] = {}
    members: dict[str, tarfile.TarInfo] = {}
    try:
        tee = _Tee(iter(image.save(named=True)), fd)  # type: ignore[attr-defined]
        pending: tarfile.TarInfo | None = None
        hashes: dict[str, Any] = {}

        def complete(member: tarfile.TarInfo) -> None:
            if member.isfile() and _LAYER.match(member.name):
                what = f"{name}: layer {member.name}"
                # the digest of the very bytes compressed next (our private temp file): no second check
                blob = Blob(GzipSource(FileRegion(tmp, member.offset_data, member.size), None, what),
                            DOCKER_LAYER_GZIP, None, None, diff_id="sha256:" + hashes.pop(member.name).hexdigest(),
                            name=member.name[:12], prepare=functools.partial(_prepare, what=what))
                layers[member.name] = blob
                on_layer(blob)

        with tarfile.open(fileobj=tee, mode="r|", bufsize=1 << 20) as tar:  # type: ignore[call-overload]
            for member in tar:
                if pending is not None:
                    complete(pending)  # its data is in the file now: the next header was read
                members[member.name] = member
                if member.isfile() and _LAYER.match(member.name):  # hash its data as it streams past
                    hashes[member.name] = tee.hash_from(member.offset_data, member.size)
                pending = member
        if pending is not None:
            complete(pending)
        os.close(fd)
        fd = -1
        if not layers or "manifest.json" not in members:  # OCI-format save (or nothing to overlap)
            img = docker_archive(tmp, cleanup)
            img.description = f"{name} (local daemon)"
            if layers:
                raise ImageError(f"{name}: docker save gave layers but no manifest.json")
            return img
        return _legacy_image(name, tmp, members, layers, cleanup)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        cleanup()
        raise


def _legacy_image(name: str, tmp: Path, members: dict[str, tarfile.TarInfo], layers: dict[str, Blob],
                  cleanup: Callable[[], None]) -> Image:
    def read(member_name: str) -> bytes:
        m = members.get(member_name)
        if m is None or not m.isfile():
            raise ImageError(f"{name}: docker save has no {member_name}")
        return b"".join(FileRegion(tmp, m.offset_data, m.size).chunks())

    def layer_for(member_name: str) -> Blob:
        seen = 0
        while member_name not in layers and seen < 8:  # symlinked duplicate layers
            m = members.get(member_name)
            if m is None or not m.issym():
                raise ImageError(f"{name}: docker save has no layer {member_name}")
            member_name = posixpath.normpath(posixpath.join(posixpath.dirname(member_name), m.linkname))
            seen += 1
        return layers[member_name]

    try:
        entry = json.loads(read("manifest.json"))[0]
        config_member = members[entry["Config"]]
        diff_ids = json.loads(read(entry["Config"]))["rootfs"]["diff_ids"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise ImageError(f"{name}: docker save gave a manifest.json or config that cannot be read") from None
    ordered = [layer_for(n) for n in entry["Layers"]]
    if len(ordered) != len(diff_ids):
        raise ImageError(f"{name}: {len(ordered)} layers but the config lists {len(diff_ids)}")
    config_region = FileRegion(tmp, config_member.offset_data, config_member.size)
    config = Blob(config_region, DOCKER_CONFIG, config_region.sha256(), config_region.size, name="config")

    def render(uploaded: dict[Blob, tuple[str, int]]) -> list[tuple[bytes, str]]:
        for blob, expected, layer_name in zip(ordered, diff_ids, entry["Layers"], strict=True):
            if blob.diff_id != expected:  # known once each layer was prepared by its worker
                raise ImageError(f"{name}: layer {layer_name} does not match its diff_id {expected} in the image "
                                 f"config (content is {blob.diff_id}); nothing was tagged")
        manifest = {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "size": config.size, "digest": config.digest},
            "layers": [{"mediaType": DOCKER_LAYER_GZIP, "size": uploaded[b][1], "digest": uploaded[b][0]}
                       for b in ordered],
        }
        return [(json.dumps(manifest, indent=3).encode(), DOCKER_MANIFEST)]

    unique = list(dict.fromkeys([config, *ordered]))
    img = Image(f"{name} (local daemon)", unique, render, cleanup)
    return img


__all__ = ["stream_daemon_image"]
