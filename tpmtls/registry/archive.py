"""`docker save` archives (`docker-archive:PATH`): the config and the layers; plain layers
are gzipped on the fly, compressed ones pushed as they are once their content is checked.

A layer's bytes are checked against its diff_id whenever they are read, and read only when
they must be: a re-push of an archive that has not changed reads none of them. The cache
(blobcache.py) remembers each layer's region of this very file (device, inode, size,
mtime, ctime) once it was read whole and matched; a layer it vouches for is HEADed by its
compressed digest and skipped. A layer nothing vouches for is read: while it uploads, or,
when the registry already has its compressed form, in a hash pass (`Blob.check`) before
the registry's copy stands in for it.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from pathlib import Path
from typing import Callable

from ..errors import ImageError
from .blobcache import BlobCache, FileIdentity, Seen
from .oci import oci_image
from .sources import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    Blob,
    FileRegion,
    GzipSource,
    Image,
    ImageFiles,
    VerifiedRegion,
    docker_manifest,
)


def docker_archive(path: Path, cleanup: Callable[[], None] = lambda: None, cache: BlobCache | None = None) -> Image:
    """A `docker save` tar: config and layers; plain layers are gzipped on the fly. With
    `cache`, layers it saw whole in this very file are not read again (module docstring)."""
    files = ImageFiles(path)
    if not files.members:
        raise ImageError(f"{path}: not a docker-archive tar")
    if files.has("oci-layout") and files.has("index.json") and not files.has("manifest.json"):
        return oci_image(path)
    entries = files.json("manifest.json")
    if not isinstance(entries, list) or not entries:
        raise ImageError(f"{path}: manifest.json lists no image")
    entry = entries[0]
    config_region = files.region(entry["Config"])
    config_bytes = b"".join(config_region.chunks())
    config_digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    try:
        diff_ids = json.loads(config_bytes)["rootfs"]["diff_ids"]
    except (ValueError, KeyError):
        raise ImageError(f"{path}: {entry['Config']} is not an image config") from None
    if len(diff_ids) != len(entry["Layers"]):
        raise ImageError(f"{path}: {len(entry['Layers'])} layers but the config lists {len(diff_ids)}")
    config = Blob(config_region, DOCKER_CONFIG, config_digest, config_region.size, name="config")
    try:
        st = path.stat()
    except OSError as e:
        raise ImageError(f"{path}: cannot read: {e.strerror or e}") from None
    layers = [_layer(path, st, files.region(name), diff_id, f"{path}: layer {name}", cache)
              for name, diff_id in zip(entry["Layers"], diff_ids, strict=True)]

    def render(uploaded: dict[Blob, tuple[str, int]]) -> list[tuple[bytes, str]]:
        assert config.digest is not None and config.size is not None
        return [(docker_manifest(config.digest, config.size, [uploaded[b] for b in layers]), DOCKER_MANIFEST)]

    return Image(f"docker-archive:{path}", [config, *layers], render, cleanup)


def _layer(path: Path, st: os.stat_result, region: FileRegion, diff_id: str, what: str,
           cache: BlobCache | None) -> Blob:
    """One layer's blob; its bytes are read here only when it is stored compressed and unseen."""
    identity = FileIdentity.of(path, region.start, region.size, st)
    seen = cache.seen(identity) if cache is not None else None
    short = diff_id[7:19]
    if seen is not None and seen.content == diff_id:  # read whole and matched before, unchanged since
        if seen.packed and seen.packed_size is not None:
            return Blob(VerifiedRegion(region, seen.packed, what), DOCKER_LAYER_GZIP, seen.packed, seen.packed_size,
                        diff_id=diff_id, name=short)
        return Blob(GzipSource(region, diff_id, what), DOCKER_LAYER_GZIP, None, None, diff_id=diff_id, name=short)

    def saw(packed: str | None = None) -> None:
        if cache is not None and FileIdentity.of(path, region.start, region.size) == identity:  # unchanged meanwhile
            cache.saw(identity, Seen(diff_id, packed, region.size if packed else None))

    if region.head(2) == b"\x1f\x8b":  # already compressed: push as it is, once its content is checked
        digest = _check_gzip_layer(region, diff_id, what)
        saw(digest)
        return Blob(VerifiedRegion(region, digest, what), DOCKER_LAYER_GZIP, digest, region.size, diff_id=diff_id,
                    name=short)

    def check() -> None:
        content = region.sha256()
        if content != diff_id:
            raise ImageError(f"{what} does not match its diff_id {diff_id} in the image config "
                             f"(content is {content}); nothing was tagged")
        saw()

    return Blob(GzipSource(region, diff_id, what, verified=saw), DOCKER_LAYER_GZIP, None, None, diff_id=diff_id,
                name=short, check=check)


def _check_gzip_layer(region: FileRegion, diff_id: str, what: str) -> str:
    """The compressed digest of a gzipped layer whose uncompressed content matches `diff_id`."""
    packed, plain = hashlib.sha256(), hashlib.sha256()
    z = zlib.decompressobj(31)
    try:
        for data in region.chunks():
            packed.update(data)
            plain.update(z.decompress(data))
        plain.update(z.flush())
    except zlib.error as e:
        raise ImageError(f"{what}: not valid gzip ({e})") from None
    if "sha256:" + plain.hexdigest() != diff_id:
        raise ImageError(f"{what} does not match its diff_id {diff_id} in the image config "
                         f"(content is sha256:{plain.hexdigest()}); nothing was tagged")
    return "sha256:" + packed.hexdigest()
