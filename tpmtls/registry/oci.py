"""OCI image layouts (`oci:PATH[:TAG|@DIGEST]`, `oci-archive:PATH`): blobs and manifests pushed
exactly as stored, each blob checked against its digest as it is read."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import ImageError
from .sources import INDEX_TYPES, Blob, Image, ImageFiles, VerifiedRegion


def parse_platform(text: str) -> tuple[str, str, str | None]:
    """'linux/arm64[/v8]' → ('linux', 'arm64', 'v8')."""
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ImageError(f"--platform {text!r}: write it as OS/ARCH[/VARIANT], e.g. linux/amd64")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


def _platform_of(files: "ImageFiles", desc: dict) -> tuple[str, str, str | None] | None:
    """A descriptor's platform: its own `platform`, or for an image manifest, its config's."""
    p = desc.get("platform")
    if isinstance(p, dict):
        return p.get("os", ""), p.get("architecture", ""), p.get("variant")
    if desc.get("mediaType") in INDEX_TYPES:
        return None
    try:
        doc = json.loads(files.read(f"blobs/{desc['digest'].replace(':', '/')}"))
        config = json.loads(files.read(f"blobs/{doc['config']['digest'].replace(':', '/')}"))
        return config.get("os", ""), config.get("architecture", ""), config.get("variant")
    except (ImageError, ValueError, KeyError, TypeError):
        return None


def _matches(found: tuple[str, str, str | None] | None, wanted: tuple[str, str, str | None]) -> bool:
    return found is not None and found[:2] == wanted[:2] and (wanted[2] is None or found[2] == wanted[2])


def oci_image(path: Path, tag: str | None = None, *, digest: str | None = None, platform: str | None = None) -> Image:
    """An OCI image layout (directory or tar): blobs and manifests pushed exactly as stored.

    One image is chosen by TAG, by DIGEST, or by `platform` (among several untagged
    manifests, or inside a multi-platform index: then only that platform's manifest goes)."""
    files = ImageFiles(path)
    if not files.has("oci-layout") or not files.has("index.json"):
        raise ImageError(f"{path}: not an OCI image layout (no oci-layout/index.json)")
    index = files.json("index.json")
    descriptors = index.get("manifests") if isinstance(index, dict) else None
    if not descriptors:
        raise ImageError(f"{path}: index.json lists no manifests")
    wanted = parse_platform(platform) if platform else None
    chosen = descriptors
    if tag:
        chosen = [d for d in chosen if (d.get("annotations") or {}).get("org.opencontainers.image.ref.name") == tag]
        if not chosen:
            raise ImageError(f"{path}: no image tagged {tag!r}")
    if digest:
        chosen = [d for d in chosen if d.get("digest") == digest]
        if not chosen:
            raise ImageError(f"{path}: index.json lists no manifest {digest}")
    if len(chosen) > 1 and wanted:
        chosen = [d for d in chosen if _matches(_platform_of(files, d), wanted)]
        if not chosen:
            raise ImageError(f"{path}: no image for platform {platform}")
    if len(chosen) > 1:
        names = [(d.get("annotations") or {}).get("org.opencontainers.image.ref.name") or d.get("digest", "?")[:19]
                 for d in chosen]
        raise ImageError(f"{path}: holds {len(chosen)} images ({', '.join(names)}); choose one as oci:{path}:TAG, "
                         f"oci:{path}@DIGEST or with --platform OS/ARCH")
    blobs: dict[str, Blob] = {}
    manifests: list[tuple[bytes, str]] = []

    def blob_of(desc: dict) -> Blob:
        digest = desc["digest"]
        if digest not in blobs:
            region = files.region(f"blobs/{digest.replace(':', '/')}")
            if region.size != desc.get("size", region.size):
                raise ImageError(f"{path}: blob {digest} has {region.size} bytes, its descriptor says {desc['size']}")
            source = VerifiedRegion(region, digest, f"{path}: blob {digest}")
            blobs[digest] = Blob(source, desc.get("mediaType", ""), digest, region.size, name=digest[7:19])
        return blobs[digest]

    def walk(desc: dict, depth: int = 0) -> None:
        if depth > 4:
            raise ImageError(f"{path}: indexes nested too deeply")
        data = files.read(f"blobs/{desc['digest'].replace(':', '/')}")
        if "sha256:" + hashlib.sha256(data).hexdigest() != desc["digest"]:
            raise ImageError(f"{path}: manifest {desc['digest']} does not match its content")
        doc = json.loads(data)
        media_type = desc.get("mediaType") or doc.get("mediaType") or "application/vnd.oci.image.manifest.v1+json"
        if media_type in INDEX_TYPES:
            for child in doc.get("manifests", []):
                walk(child, depth + 1)
        else:
            blob_of(doc["config"])
            for layer in doc.get("layers", []):
                blob_of(layer)
        manifests.append((data, media_type))

    top = chosen[0]
    if wanted and top.get("mediaType") in INDEX_TYPES:  # one platform out of a multi-platform index
        data = files.read(f"blobs/{top['digest'].replace(':', '/')}")
        if "sha256:" + hashlib.sha256(data).hexdigest() != top["digest"]:
            raise ImageError(f"{path}: index {top['digest']} does not match its content")
        children = [c for c in json.loads(data).get("manifests", []) if _matches(_platform_of(files, c), wanted)]
        if len(children) != 1:
            raise ImageError(f"{path}: the index {top['digest'][:19]} has {len(children)} images for {platform}")
        top = children[0]
    walk(top)
    return Image(f"oci:{path}", list(blobs.values()), lambda uploaded: manifests)
