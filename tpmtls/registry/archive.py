"""`docker save` archives (`docker-archive:PATH`): the config and the layers; plain layers
are gzipped on the fly, compressed ones pushed as they are once their content is checked."""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path
from typing import Callable

from ..errors import ImageError
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
)


def docker_archive(path: Path, cleanup: Callable[[], None] = lambda: None) -> Image:
    """A `docker save` tar: config and layers; plain layers are gzipped on the fly."""
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
    layers = []
    for name, diff_id in zip(entry["Layers"], diff_ids, strict=True):
        region = files.region(name)
        short = diff_id[7:19]
        what = f"{path}: layer {name}"
        if region.head(2) == b"\x1f\x8b":  # already compressed: push as it is, once its content is checked
            digest = _check_gzip_layer(region, diff_id, what)
            layers.append(Blob(VerifiedRegion(region, digest, what), DOCKER_LAYER_GZIP, digest, region.size, name=short))
        else:
            layers.append(Blob(GzipSource(region, diff_id, what), DOCKER_LAYER_GZIP, None, None, diff_id=diff_id,
                               name=short))

    def render(uploaded: dict[Blob, tuple[str, int]]) -> list[tuple[bytes, str]]:
        manifest = {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "size": config.size, "digest": config.digest},
            "layers": [{"mediaType": DOCKER_LAYER_GZIP, "size": uploaded[b][1], "digest": uploaded[b][0]} for b in layers],
        }
        return [(json.dumps(manifest, indent=3).encode(), DOCKER_MANIFEST)]

    return Image(f"docker-archive:{path}", [config, *layers], render, cleanup)


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
