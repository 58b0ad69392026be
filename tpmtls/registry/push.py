"""tpmtls.push(): an image to a registry over TPM-backed mTLS, like `docker push`.

Blobs go in parallel (HEAD first, then a cross-repository mount where a blob is known
to live in another repository of the registry, else a chunked resumable upload); the
manifest goes last, so an interrupted push never leaves a tag pointing at missing
blobs, and running it again resumes (blobs already sent are skipped).
"""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from .._files import write_atomic
from ..errors import RegistryError
from .certs import registry_client
from .client import RegistryClient
from .credentials import Credentials
from .daemon_stream import stream_daemon_image
from .progress import Progress
from .reference import Reference, parse_reference
from .sources import Blob, Image, find_daemon_image, is_daemon_spec, open_image


@dataclass(frozen=True)
class PushResult:
    reference: Reference
    digest: str
    size: int  # bytes of the top manifest, as docker push prints it
    uploaded: int
    mounted: int
    existing: int
    bytes_sent: int

    def line(self) -> str:
        """Exactly docker push's last line."""
        return f"{self.reference.ref}: digest: {self.digest} size: {self.size}"


class BlobCache:
    """What earlier pushes learnt: compressed digests of plain layers, and where blobs live.

    `$XDG_CACHE_HOME/tpmtls/blobs.json`; lossy by design (a wrong entry costs a HEAD or
    a failed mount, never a wrong push: every digest is checked by the registry).
    """

    def __init__(self, path: Path | None = None) -> None:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        self.path = path or base / "tpmtls" / "blobs.json"
        self._lock = threading.Lock()
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            data = {}
        self.compressed: dict[str, list] = data.get("compressed", {})
        self.repos: dict[str, dict[str, list[str]]] = data.get("repos", {})

    def lookup(self, diff_id: str) -> tuple[str, int] | None:
        entry = self.compressed.get(diff_id)
        return (entry[0], int(entry[1])) if entry else None

    def where(self, registry: str, digest: str) -> list[str]:
        return list(self.repos.get(registry, {}).get(digest, []))

    def record(self, registry: str, repo: str, blob: Blob, digest: str, size: int) -> None:
        with self._lock:
            if blob.diff_id:
                self.compressed[blob.diff_id] = [digest, size]
            repos = self.repos.setdefault(registry, {}).setdefault(digest, [])
            if repo not in repos:
                repos.append(repo)
                del repos[:-8]  # a few places are enough to mount from

    def save(self) -> None:
        """Write atomically (temp file + rename), merged with what other pushes saved meanwhile."""
        with self._lock:
            try:
                disk = json.loads(self.path.read_text())
                if isinstance(disk, dict):
                    for k, v in (disk.get("compressed") or {}).items():
                        self.compressed.setdefault(k, v)
                    for registry, digests in (disk.get("repos") or {}).items():
                        mine = self.repos.setdefault(registry, {})
                        for digest, repos in digests.items():
                            known = mine.setdefault(digest, [])
                            known[:0] = [r for r in repos if r not in known]
                            del known[:-8]
            except (OSError, ValueError, AttributeError, TypeError):
                pass
            data = json.dumps({"compressed": self.compressed, "repos": self.repos}).encode()
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(self.path, data, 0o600)
            except OSError:
                pass  # a cache we cannot write only costs speed next time


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
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    cache: BlobCache | None = None,
    platform: str | None = None,
) -> PushResult:
    """Push `image` (see sources.open_image) to HOST[:PORT]/REPO[:TAG]; returns the manifest digest."""
    ref = parse_reference(destination)
    client = registry_client(ref.registry, cert_dir=cert_dir, certs_root=certs_root, resolve=resolve, jobs=jobs,
                             credentials=credentials, tcti=tcti)
    progress = progress or Progress(None)
    cancel = cancel or threading.Event()
    cache = cache or BlobCache()
    img: Image | None = None
    try:
        streamed = isinstance(image, str) and is_daemon_spec(image) and not platform
        if streamed:
            assert isinstance(image, str)
            local = find_daemon_image(image)  # exists? (cheap)
            client.check()  # TLS and credentials accepted, before the daemon saves anything
        else:
            img = open_image(image, platform) if isinstance(image, str) else image
            client.check()
        progress.line(f"The push refers to repository [{ref.registry}/{ref.repository}]")
        uploaded: dict[Blob, tuple[str, int]] = {}
        counts = {"uploaded": 0, "mounted": 0, "existing": 0}
        lock = threading.Lock()

        def one(blob: Blob) -> None:
            if blob.prepare is not None:
                blob.prepare(blob)
            digest, size, how = _ensure(client, ref, blob, cache, progress, cancel)
            with lock:
                uploaded[blob] = (digest, size)
                counts[how] += 1
            cache.record(ref.registry, ref.repository, blob, digest, size)
            cache.save()  # as each blob completes: an interrupted push resumes from here

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
                if streamed:  # layers upload while the daemon still saves the next ones
                    img = stream_daemon_image(image, local, submit)  # type: ignore[arg-type]
                assert img is not None
                for b in img.blobs:
                    submit(b)
                wait(list(futures.values()), return_when=FIRST_EXCEPTION)
                failed()
            except BaseException:
                cancel.set()
                for f in futures.values():
                    f.cancel()
                raise
        cache.save()
        manifests = img.render(uploaded)
        digest = ""
        for i, (data, media_type) in enumerate(manifests):
            top = i == len(manifests) - 1
            target = (ref.digest or ref.ref) if top else None
            digest = client.put_manifest(ref.repository, target or _sha(data), data, media_type)
        if ref.digest and digest != ref.digest:
            raise RegistryError(f"{ref}: the manifest pushed has digest {digest}, not the one named")
        result = PushResult(ref, digest, len(manifests[-1][0]), counts["uploaded"], counts["mounted"],
                            counts["existing"], client.bytes_sent)
        progress.line(result.line())
        return result
    finally:
        progress.close()
        client.close()
        if img is not None:
            img.cleanup()


def _sha(data: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()


def _ensure(client: RegistryClient, ref: Reference, blob: Blob, cache: BlobCache, progress: Progress,
            cancel: threading.Event) -> tuple[str, int, str]:
    """Make sure the registry has `blob` in ref's repository: existing, mounted or uploaded."""
    repo = ref.repository
    known = (blob.digest, blob.size or 0) if blob.digest else cache.lookup(blob.diff_id or "")
    task = progress.task(blob.name, blob.size)
    if known and known[0] and client.blob_exists(repo, known[0]):
        task.done("Layer already exists")
        return known[0], int(known[1]), "existing"
    location = None
    if known and known[0]:
        for other in cache.where(ref.registry, known[0]):
            if other == repo:
                continue
            location = client.mount(repo, known[0], other)
            if location is None:
                task.done(f"Mounted from {other}")
                return known[0], int(known[1]), "mounted"
            break  # 202: the registry opened an upload instead; use it
    digest, size = client.upload(repo, blob.source, blob.digest, task.advance, location, cancel)
    task.done("Pushed")
    return digest, size, "uploaded"


__all__ = ["BlobCache", "PushResult", "push"]
