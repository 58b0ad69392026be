"""IMAGE as tpmtls-push takes it: a local daemon image, `docker-archive:PATH`,
`oci:PATH[:TAG|@DIGEST]` or `oci-archive:PATH[@DIGEST]`."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import ImageError
from .archive import docker_archive
from .blobcache import BlobCache
from .leftovers import SHARED_TMP_MIN_AGE, sweep_stale
from .oci import oci_image
from .sources import Image


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
        streamed = 0
        with os.fdopen(fd, "wb") as out:
            for data in image.save(named=True):  # type: ignore[attr-defined]
                out.write(data)
                streamed += len(data)
        img = docker_archive(Path(tmp), cleanup)
        img.streamed = streamed
    except BaseException:
        cleanup()
        raise
    img.description = f"{name} (local daemon)"
    return img


def is_daemon_spec(spec: str) -> bool:
    """IMAGE names a local daemon image (not a file source)?"""
    return not spec.startswith(("docker-archive:", "oci-archive:", "oci:"))


def open_image(spec: str, platform: str | None = None, cache: BlobCache | None = None) -> Image:
    """IMAGE as tpmtls-push takes it: docker-archive:PATH, oci:PATH[:TAG|@DIGEST],
    oci-archive:PATH[@DIGEST], or a daemon image; `platform` (OS/ARCH) picks one image.
    `cache`: what it saw of an archive's layers before (archive.py)."""
    if spec.startswith("docker-archive:"):
        return docker_archive(Path(spec.split(":", 1)[1]), cache=cache)
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
