"""tpmtls.push(): an image to a registry over TPM-backed mTLS, like `docker push`.

Blobs go in parallel (HEAD first, then a cross-repository mount where a blob is known
to live in another repository of the registry, else a chunked resumable upload); the
manifest goes last, so an interrupted push never leaves a tag pointing at missing
blobs, and running it again resumes (blobs already sent are skipped).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable

from ..errors import RegistryError
from .blobcache import BlobCache
from .certs import KeyPassword, registry_client
from .client import RegistryClient
from .credentials import Credentials
from .daemon_stream import from_cache, remember, stream_daemon_image
from .images import find_daemon_image, is_daemon_spec, open_image
from .progress import Progress
from .reference import Reference, parse_reference
from .sources import CONFIG_TYPES, Blob, Image


@dataclass(frozen=True)
class PushResult:
    reference: Reference
    digest: str
    size: int  # bytes of the top manifest, as docker push prints it
    uploaded: int
    mounted: int
    existing: int
    bytes_sent: int
    layer_bytes_read: int = 0  # layer bytes read from the image source (a `docker save` stream counts whole)
    saved: bool = False  # a daemon image had to be saved (`docker save`); a re-push of a known one needs none

    def line(self) -> str:
        """Exactly docker push's last line."""
        return f"{self.reference.ref}: digest: {self.digest} size: {self.size}"


def push(
    image: str | Image,
    destination: str,
    *,
    cert_dir: str | os.PathLike[str] | None = None,
    certs_root: str | os.PathLike[str] | None = None,
    resolve: dict[str, str] | None = None,
    jobs: int = 4,
    credentials: Credentials | None = None,
    tcti: str | None = None,
    key_password: KeyPassword | None = None,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    cache: BlobCache | None = None,
    platform: str | None = None,
) -> PushResult:
    """Push `image` (see images.open_image) to HOST[:PORT]/REPO[:TAG]; returns the manifest digest."""
    ref = parse_reference(destination)
    client = registry_client(ref.registry, cert_dir=cert_dir, certs_root=certs_root, resolve=resolve, jobs=jobs,
                             credentials=credentials, tcti=tcti, key_password=key_password)
    progress = progress or Progress(None)
    cancel = cancel or threading.Event()
    cache = cache or BlobCache()
    sent = _Sent()
    img: Image | None = None
    try:
        daemon = isinstance(image, str) and is_daemon_spec(image) and not platform
        if daemon:
            assert isinstance(image, str)
            local = find_daemon_image(image)  # exists? (cheap)
            client.check()  # TLS and credentials accepted, before the daemon saves anything
        else:
            img = open_image(image, platform, cache) if isinstance(image, str) else image
            client.check()
        progress.line(f"The push refers to repository [{ref.registry}/{ref.repository}]")
        if daemon:
            assert isinstance(image, str)
            img = from_cache(image, local, ref.registry, ref.repository, cache)
            if img is None or not _all_present(client, ref, img, cache, progress, sent):
                sent = _Sent()  # what the registry lacks comes from a save; what it has is skipped again
                img = _send(client, ref, None, cache, progress, cancel, jobs, sent,
                            lambda submit: stream_daemon_image(image, local, submit))
                sent.saved = True
        else:
            assert img is not None
            _send(client, ref, img, cache, progress, cancel, jobs, sent)
        cache.save()
        manifests = img.render(sent.uploaded)
        digest = ""
        for i, (data, media_type) in enumerate(manifests):
            top = i == len(manifests) - 1
            target = (ref.digest or ref.ref) if top else None
            digest = client.put_manifest(ref.repository, target or _sha(data), data, media_type)
        if ref.digest and digest != ref.digest:
            raise RegistryError(f"{ref}: the manifest pushed has digest {digest}, not the one named")
        if daemon and sent.saved:
            remember(local, img, cache)
            cache.save()
        result = PushResult(ref, digest, len(manifests[-1][0]), sent.counts["uploaded"], sent.counts["mounted"],
                            sent.counts["existing"], client.bytes_sent, sent.layer_bytes_read(img), sent.saved)
        progress.line(result.line())
        return result
    finally:
        progress.close()
        client.close()
        if img is not None:
            img.cleanup()


class _Sent:
    """What a push did with each blob: the (digest, size) the registry holds, and counts."""

    def __init__(self) -> None:
        self.uploaded: dict[Blob, tuple[str, int]] = {}
        self.counts = {"uploaded": 0, "mounted": 0, "existing": 0}
        self.saved = False
        self.streamed = 0  # bytes of a `docker save` stream
        self.lock = threading.Lock()

    def add(self, blob: Blob, digest: str, size: int, how: str) -> None:
        with self.lock:
            self.uploaded[blob] = (digest, size)
            self.counts[how] += 1

    def layer_bytes_read(self, img: Image) -> int:
        """From a daemon: the `docker save` stream; from files: what was read of their layers."""
        return self.streamed or sum(b.bytes_read() for b in img.blobs if b.media_type not in CONFIG_TYPES)


def _send(client: RegistryClient, ref: Reference, img: Image | None, cache: BlobCache, progress: Progress,
          cancel: threading.Event, jobs: int, sent: _Sent,
          stream: Callable[[Callable[[Blob], None]], Image] | None = None) -> Image:
    """Every blob of `img` (or of the image `stream` produces while calling back per blob)
    into the registry, in parallel; returns the image."""

    def one(blob: Blob) -> None:
        if blob.prepare is not None:
            blob.prepare(blob)
        digest, size, how = _ensure(client, ref, blob, cache, progress, cancel)
        sent.add(blob, digest, size, how)
        cache.record(ref.registry, ref.repository, digest, size, blob.diff_id)
        if how == "uploaded":
            cache.save()  # as each upload completes: an interrupted push resumes from here

    with ThreadPoolExecutor(max(1, jobs), thread_name_prefix="tpmtls-push") as pool:
        futures: dict[Blob, Future[None]] = {}

        def failed() -> None:
            for f in list(futures.values()):
                if f.done() and f.exception():
                    raise f.exception()  # type: ignore[misc]

        def submit(blob: Blob) -> None:
            failed()  # a worker's error stops the save too
            if blob not in futures:
                futures[blob] = pool.submit(one, blob)

        try:
            if stream is not None:  # layers upload while the daemon still saves the next ones
                img = stream(submit)
            assert img is not None
            for b in img.blobs:
                submit(b)
            wait(list(futures.values()), return_when=FIRST_EXCEPTION)
            failed()
        except BaseException:
            cancel.set()
            for f in futures.values():
                f.cancel()
            client.transport.abort()  # an upload blocked on a stalled registry must not hold the exit
            raise
    sent.streamed += img.streamed
    return img


def _all_present(client: RegistryClient, ref: Reference, img: Image, cache: BlobCache, progress: Progress,
                 sent: _Sent) -> bool:
    """Does the registry have (or can it mount into ref's repository) every blob of `img`,
    whose digests are known? Nothing is uploaded: a blob missing means the image must be saved."""
    repo = ref.repository
    for blob in img.blobs:
        assert blob.digest is not None and blob.size is not None
        if client.blob_exists(repo, blob.digest):
            how = "existing"
            progress.line(f"{blob.name}: Layer already exists")
        elif _mount(client, ref, blob.digest, cache):
            how = "mounted"
            progress.line(f"{blob.name}: Mounted")
        else:
            return False
        sent.add(blob, blob.digest, blob.size, how)
        cache.record(ref.registry, repo, blob.digest, blob.size, blob.diff_id)
    return True


def _mount(client: RegistryClient, ref: Reference, digest: str, cache: BlobCache) -> bool:
    """Mount `digest` into ref's repository from one the cache saw it in (201); False if none did."""
    for other in cache.where(ref.registry, digest):
        if other != ref.repository and client.mount(ref.repository, digest, other) is None:
            return True
    return False


def _sha(data: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()


def _ensure(client: RegistryClient, ref: Reference, blob: Blob, cache: BlobCache, progress: Progress,
            cancel: threading.Event) -> tuple[str, int, str]:
    """Make sure the registry has `blob` in ref's repository: existing, mounted or uploaded."""
    repo = ref.repository
    if blob.digest:
        known: tuple[str, int] | None = (blob.digest, blob.size or 0)
    else:
        known = cache.lookup(ref.registry, repo, blob.diff_id) if blob.diff_id else None
    task = progress.task(blob.name, blob.size)
    if known and client.blob_exists(repo, known[0]):
        if blob.check is not None:
            blob.check()  # the registry's copy stands in for ours: ours must be what it claims
        task.done("Layer already exists")
        return known[0], int(known[1]), "existing"
    location = None
    if known:
        for other in cache.where(ref.registry, known[0]):
            if other == repo:
                continue
            if blob.check is not None:
                blob.check()
            location = client.mount(repo, known[0], other)
            if location is None:
                task.done(f"Mounted from {other}")
                return known[0], int(known[1]), "mounted"
            break  # 202: the registry opened an upload instead; use it
    digest, size = client.upload(repo, blob.source, blob.digest, task.advance, location, cancel)
    task.done("Pushed")
    return digest, size, "uploaded"


__all__ = ["BlobCache", "PushResult", "push"]
