"""Images to push: a daemon image, `docker-archive:PATH`, `oci:PATH[:TAG]`, `oci-archive:PATH`.

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
import tempfile
import types
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ..errors import ImageError
from .leftovers import SHARED_TMP_MIN_AGE, sweep_stale

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
    """`size` bytes of `path` from `start`."""

    size: int

    def __init__(self, path: Path, start: int, size: int) -> None:
        self.path, self.start, self.size = path, start, size

    def chunks(self) -> Iterator[bytes]:
        with open(self.path, "rb") as f:
            f.seek(self.start)
            left = self.size
            while left > 0:
                data = f.read(min(READ, left))
                if not data:
                    raise ImageError(f"{self.path}: ends early (truncated archive?)")
                left -= len(data)
                yield data

    def head(self, n: int) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(self.start)
            return f.read(min(n, self.size))

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

    def __init__(self, inner: FileRegion, diff_id: str | None = None, what: str = "layer") -> None:
        self.inner = inner
        self.size = None
        self.level: int | None = None
        self.diff_id, self.what = diff_id, what

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


@dataclass
class Image:
    """What a push sends: blobs, then manifests built from what the blobs became."""

    description: str
    blobs: list[Blob]
    # (uploaded digests/sizes by blob) -> [(manifest bytes, media type)], children first, top last
    render: Callable[[dict[Blob, tuple[str, int]]], list[tuple[bytes, str]]]
    cleanup: Callable[[], None] = field(default=lambda: None)


# ---- files: a directory or an uncompressed tar ----------------------------------------


class _Files:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.members: dict[str, tarfile.TarInfo] = {}
        if path.is_file():
            try:
                with tarfile.open(path, "r:") as tar:
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


# ---- OCI image layout ------------------------------------------------------------------


def parse_platform(text: str) -> tuple[str, str, str | None]:
    """'linux/arm64[/v8]' → ('linux', 'arm64', 'v8')."""
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ImageError(f"--platform {text!r}: write it as OS/ARCH[/VARIANT], e.g. linux/amd64")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


def _platform_of(files: "_Files", desc: dict) -> tuple[str, str, str | None] | None:
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
    files = _Files(path)
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


# ---- docker save archives --------------------------------------------------------------


def docker_archive(path: Path, cleanup: Callable[[], None] = lambda: None) -> Image:
    """A `docker save` tar: config and layers; plain layers are gzipped on the fly."""
    files = _Files(path)
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


def find_daemon_image(name: str) -> object:
    """The local daemon's image `name` ($DOCKER_HOST), looked up without saving it."""
    import docker
    from docker.errors import DockerException, ImageNotFound

    try:
        client = docker.from_env(timeout=600)
        return client.images.get(name)
    except ImageNotFound:
        raise ImageError(f"{name}: no such image in the local Docker daemon") from None
    except DockerException as e:
        raise ImageError(f"cannot reach the Docker daemon for {name!r}: {str(e).splitlines()[0]}") from None


def daemon_image(name: str, image: object | None = None) -> Image:
    """An image of the local daemon, saved to a temp file first (disk, not memory)."""
    image = image if image is not None else find_daemon_image(name)
    sweep_stale(Path(tempfile.gettempdir()), "tpmtls-save-", SHARED_TMP_MIN_AGE)  # left by pushes that were killed
    fd, tmp = tempfile.mkstemp(prefix=f"tpmtls-save-{os.getpid()}-", suffix=".tar")

    def cleanup() -> None:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass

    try:
        with os.fdopen(fd, "wb") as out:
            for data in image.save(named=True):  # type: ignore[attr-defined]
                out.write(data)
        img = docker_archive(Path(tmp), cleanup)
    except BaseException:
        cleanup()
        raise
    img.description = f"{name} (local daemon)"
    return img


def is_daemon_spec(spec: str) -> bool:
    """IMAGE names a local daemon image (not a file source)?"""
    return not spec.startswith(("docker-archive:", "oci-archive:", "oci:"))


def open_image(spec: str, platform: str | None = None) -> Image:
    """IMAGE as tpmtls-push takes it: docker-archive:PATH, oci:PATH[:TAG|@DIGEST],
    oci-archive:PATH[@DIGEST], or a daemon image; `platform` (OS/ARCH) picks one image."""
    if spec.startswith("docker-archive:"):
        return docker_archive(Path(spec.split(":", 1)[1]))
    if spec.startswith(("oci-archive:", "oci:")):
        kind, rest = spec.split(":", 1)
        rest, at, digest = rest.partition("@")
        if at and not (digest.startswith("sha256:") and len(digest) == 71):
            raise ImageError(f"{spec!r}: {digest!r} is not a sha256 digest")
        path, tag = (rest, "") if kind == "oci-archive" else rest.partition(":")[::2]
        return oci_image(Path(path), tag or None, digest=digest or None, platform=platform)
    if platform:
        raise ImageError("--platform chooses among the images of an OCI layout (oci:PATH); a daemon image is one image")
    return daemon_image(spec)
