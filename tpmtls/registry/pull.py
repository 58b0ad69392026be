"""tpmtls.pull(): an image from a registry over TPM-backed mTLS to `oci:PATH`,
`docker-archive:PATH` or `docker-daemon:` (loaded into the local daemon).

Every blob and manifest is checked against its digest; blobs download in parallel
into temp files beside the destination and are renamed into place, so an interrupted
pull leaves no half-written blob or archive behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .._files import OutputError, check_writable, write_atomic
from ..errors import ImageError, RegistryError
from .certs import registry_client
from .client import RegistryClient
from .credentials import Credentials
from .leftovers import SHARED_TMP_MIN_AGE, TMP_PREFIX, sweep_stale
from .progress import Progress
from .reference import Reference, parse_reference
from .sources import INDEX_TYPES


@dataclass(frozen=True)
class PullResult:
    reference: Reference
    digest: str  # of the manifest (or index) the reference names
    destination: str

    def line(self) -> str:
        return f"Digest: {self.digest}\nStatus: Downloaded {self.reference} to {self.destination}"


def _blob_path(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.split(":", 1)[1]


def _fetch_blob(client: RegistryClient, repo: str, digest: str, target: Path, progress: Progress,
                cancel: threading.Event) -> None:
    if target.exists() and "sha256:" + _file_sha(target) == digest:
        progress.line(f"{digest[7:19]}: Already exists")
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:

            def write(data: bytes) -> None:
                if cancel.is_set():  # another download failed, or Ctrl-C: stop here
                    raise RegistryError("interrupted")
                out.write(data)

            client.get_blob(repo, digest, write)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    progress.line(f"{digest[7:19]}: Pull complete")


def _check_destination(kind: str, where: str) -> None:
    """Before any network call: the destination can be written (one line if not)."""
    if kind == "docker-archive":
        check_writable(where, overwrite=True)
        sweep_stale(Path(where).parent, f".{Path(where).name}.tmp-")
    elif kind == "oci":
        layout = Path(where)
        if layout.exists() and not layout.is_dir():
            raise OutputError(f"{layout}: exists and is not a directory (oci:PATH names a layout directory)")
        existing = layout
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise OutputError(f"{layout}: {existing} is not a directory")
        check_writable(existing / ".tpmtls-pull-probe", overwrite=True)
        sweep_stale(layout / "blobs" / "sha256")
    sweep_stale(Path(tempfile.gettempdir()), "tpmtls-pull-", SHARED_TMP_MIN_AGE)


def _file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _pick_platform(index: dict, wanted: tuple[str, str] = ("linux", "amd64")) -> dict:
    manifests = index.get("manifests") or []
    for m in manifests:
        p = m.get("platform") or {}
        if (p.get("os"), p.get("architecture")) == wanted:
            return m
    if len(manifests) == 1:
        return manifests[0]
    raise RegistryError(f"the index has no {wanted[0]}/{wanted[1]} image; pull it to oci:PATH to keep all platforms")


def pull(
    source: str,
    destination: str,
    *,
    cert_dir: str | os.PathLike[str] | None = None,
    certs_root: str | os.PathLike[str] | None = None,
    resolve: dict[str, str] | None = None,
    jobs: int = 4,
    credentials: Credentials | None = None,
    tcti: str | None = None,
    progress: Progress | None = None,
) -> PullResult:
    """Pull HOST[:PORT]/REPO[:TAG|@DIGEST] to oci:PATH, docker-archive:PATH or docker-daemon:."""
    kind, _, where = destination.partition(":")
    if kind not in ("oci", "docker-archive", "docker-daemon") or (kind != "docker-daemon" and not where):
        raise ImageError(f"{destination!r}: write the destination as oci:PATH, docker-archive:PATH or docker-daemon:")
    ref = parse_reference(source)
    _check_destination(kind, where)
    client = registry_client(ref.registry, cert_dir=cert_dir, certs_root=certs_root, resolve=resolve, jobs=jobs,
                             credentials=credentials, tcti=tcti)
    progress = progress or Progress(None)
    try:
        data, media_type, digest = client.get_manifest(ref.repository, ref.ref)
        progress.line(f"{ref.ref}: Pulling from {ref.repository}")
        if kind == "oci":
            _to_oci(client, ref, Path(where), data, media_type, digest, jobs, progress)
            result = PullResult(ref, digest, destination)
        else:
            with tempfile.TemporaryDirectory(prefix=f"tpmtls-pull-{os.getpid()}-") as tmp:
                layout = Path(tmp)
                archive = Path(where) if kind == "docker-archive" else layout / "image.tar"
                _to_docker_archive(client, ref, layout, archive, data, media_type, jobs, progress)
                if kind == "docker-daemon":
                    _load_into_daemon(archive, ref)
            result = PullResult(ref, digest, destination)
        progress.line(result.line())
        return result
    finally:
        progress.close()
        client.close()


def _manifest_blobs(client: RegistryClient, ref: Reference, data: bytes, media_type: str,
                    layout: Path) -> tuple[list[tuple[bytes, str, str]], set[str]]:
    """All manifests (children first) with their digests, and every blob they name."""
    manifests: list[tuple[bytes, str, str]] = []
    blobs: set[str] = set()
    doc = json.loads(data)
    if media_type in INDEX_TYPES:
        for child in doc.get("manifests", []):
            cdata, ctype, cdigest = client.get_manifest(ref.repository, child["digest"])
            sub, sub_blobs = _manifest_blobs(client, ref, cdata, ctype, layout)
            manifests += sub
            blobs |= sub_blobs
    else:
        blobs.add(doc["config"]["digest"])
        blobs.update(layer["digest"] for layer in doc.get("layers", []))
    manifests.append((data, media_type, "sha256:" + hashlib.sha256(data).hexdigest()))
    return manifests, blobs


def _download(client: RegistryClient, ref: Reference, layout: Path, digests: set[str], jobs: int,
              progress: Progress) -> None:
    cancel = threading.Event()
    with ThreadPoolExecutor(max(1, jobs), thread_name_prefix="tpmtls-pull") as pool:
        futures = [pool.submit(_fetch_blob, client, ref.repository, d, _blob_path(layout, d), progress, cancel)
                   for d in sorted(digests)]
        try:
            for f in futures:
                f.result()
        except BaseException:
            cancel.set()
            for f in futures:
                f.cancel()
            raise


def _to_oci(client: RegistryClient, ref: Reference, layout: Path, data: bytes, media_type: str, digest: str,
            jobs: int, progress: Progress) -> None:
    layout.mkdir(parents=True, exist_ok=True)
    manifests, blobs = _manifest_blobs(client, ref, data, media_type, layout)
    _download(client, ref, layout, blobs, jobs, progress)
    for mdata, _, mdigest in manifests:
        target = _blob_path(layout, mdigest)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, mdata, 0o644)
    index_path = layout / "index.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {"schemaVersion": 2, "manifests": []}
    name = ref.tag or digest
    index["manifests"] = [m for m in index.get("manifests", [])
                          if (m.get("annotations") or {}).get("org.opencontainers.image.ref.name") != name]
    index["manifests"].append({"mediaType": media_type, "digest": digest, "size": len(data),
                               "annotations": {"org.opencontainers.image.ref.name": name}})
    write_atomic(layout / "oci-layout", b'{"imageLayoutVersion": "1.0.0"}', 0o644)
    write_atomic(index_path, json.dumps(index).encode(), 0o644)


def _to_docker_archive(client: RegistryClient, ref: Reference, layout: Path, archive: Path, data: bytes,
                       media_type: str, jobs: int, progress: Progress) -> None:
    doc = json.loads(data)
    if media_type in INDEX_TYPES:
        chosen = _pick_platform(doc)
        data, media_type, _ = client.get_manifest(ref.repository, chosen["digest"])
        doc = json.loads(data)
    config, layers = doc["config"]["digest"], [layer["digest"] for layer in doc.get("layers", [])]
    _download(client, ref, layout, {config, *layers}, jobs, progress)
    tag = f"{ref.registry}/{ref.repository}:{ref.tag or 'latest'}"
    entry = [{"Config": f"{config[7:]}.json", "RepoTags": [tag] if ref.tag else [],
              "Layers": [f"{d[7:]}/layer.tar" for d in layers]}]
    archive.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{archive.name}.tmp-{os.getpid()}-", dir=archive.parent)
    try:
        with os.fdopen(fd, "wb") as out, tarfile.open(fileobj=out, mode="w") as tar:
            tar.add(_blob_path(layout, config), arcname=f"{config[7:]}.json")
            for d in layers:  # compressed layer tars: docker load takes them as they are
                tar.add(_blob_path(layout, d), arcname=f"{d[7:]}/layer.tar")
            payload = json.dumps(entry).encode()
            info = tarfile.TarInfo("manifest.json")
            info.size = len(payload)
            import io

            tar.addfile(info, io.BytesIO(payload))
        os.replace(tmp, archive)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_into_daemon(archive: Path, ref: Reference) -> None:
    import docker
    from docker.errors import DockerException

    try:
        client = docker.from_env(timeout=600)
        with open(archive, "rb") as f:
            client.images.load(f)
    except DockerException as e:
        raise ImageError(f"cannot load {ref} into the Docker daemon: {str(e).splitlines()[0]}") from None
