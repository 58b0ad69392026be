"""tpmtls.pull(): an image from a registry over TPM-backed mTLS to `oci:PATH`,
`docker-archive:PATH` or `docker-daemon:` (loaded into the local daemon).

Every blob and manifest is checked against its digest; blobs download in parallel into
temp files beside their targets, resume after a dropped connection, and are renamed into
place (fetch.py), so an interrupted pull leaves no half-written blob or archive behind and
the next run takes over what a killed one had fetched. The blobs of a docker-archive pull
are gathered beside the archive (`.NAME.tmp-<pid>-layout`), those of a docker-daemon pull
in the user's cache directory: never in a shared temp directory where nothing would
remove them.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .._files import OutputError, check_writable, write_atomic
from ..errors import ImageError, RegistryError
from .blobcache import BlobCache
from .blobcache import default_path as cache_path
from .certs import KeyPassword, registry_client
from .client import RegistryClient
from .credentials import Credentials
from .fetch import blob_path, download, no_space
from .leftovers import SHARED_TMP_MIN_AGE, TMP_PREFIX, adopt, sweep_stale
from .progress import Progress
from .reference import Reference, parse_reference
from .sources import INDEX_TYPES


@dataclass(frozen=True)
class PullResult:
    reference: Reference
    digest: str  # of the manifest (or index) the reference names
    destination: str
    fetched: int = 0  # blob bytes downloaded (blobs already in place and resumed parts not counted)

    def line(self) -> str:
        return f"Digest: {self.digest}\nStatus: Downloaded {self.reference} to {self.destination}"


def _check_destination(kind: str, where: str) -> None:
    """Before any network call: the destination can be written (one line if not)."""
    if kind == "docker-archive":
        check_writable(where, overwrite=True)
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
    # where archive and daemon pulls gathered their blobs before (only old leftovers: a shared directory)
    sweep_stale(Path(tempfile.gettempdir()), "tpmtls-pull-", SHARED_TMP_MIN_AGE)


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
    key_password: KeyPassword | None = None,
    progress: Progress | None = None,
    cache: BlobCache | None = None,
) -> PullResult:
    """Pull HOST[:PORT]/REPO[:TAG|@DIGEST] to oci:PATH, docker-archive:PATH or docker-daemon:."""
    kind, _, where = destination.partition(":")
    if kind not in ("oci", "docker-archive", "docker-daemon") or (kind != "docker-daemon" and not where):
        raise ImageError(f"{destination!r}: write the destination as oci:PATH, docker-archive:PATH or docker-daemon:")
    ref = parse_reference(source)
    _check_destination(kind, where)
    client = registry_client(ref.registry, cert_dir=cert_dir, certs_root=certs_root, resolve=resolve, jobs=jobs,
                             credentials=credentials, tcti=tcti, key_password=key_password)
    progress = progress or Progress(None)
    cache = cache or BlobCache()
    if kind == "oci":
        work, prefix = Path(where) / "blobs" / "sha256", TMP_PREFIX
    elif kind == "docker-archive":
        work, prefix = Path(where).parent, f".{Path(where).name}.tmp-"
    else:
        work, prefix = cache_path().parent / "pull", TMP_PREFIX
    try:
        data, media_type, digest = client.get_manifest(ref.repository, ref.ref)
        progress.line(f"{ref.ref}: Pulling from {ref.repository}")
        if kind == "oci":
            fetched = _to_oci(client, ref, Path(where), data, media_type, digest, jobs, progress, cache)
        else:
            layout = _work_layout(work, prefix)
            try:
                archive = Path(where) if kind == "docker-archive" else layout / "image.tar"
                fetched = _to_docker_archive(client, ref, layout, archive, data, media_type, jobs, progress, cache)
                if kind == "docker-daemon":
                    _load_into_daemon(archive, ref)
            finally:
                shutil.rmtree(layout, ignore_errors=True)
        result = PullResult(ref, digest, destination, fetched)
        progress.line(result.line())
        return result
    finally:
        sweep_stale(work, prefix)  # what killed pulls left here and this one did not take over
        progress.close()
        client.close()


def _work_layout(work: Path, prefix: str) -> Path:
    """This pull's own directory for blobs: one a killed pull left (its complete blobs are
    kept, its partial ones resumed), or a new one."""
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{work}: cannot create a directory for the download: {e.strerror or e}") from None
    ours = work / f"{prefix}{os.getpid()}-layout"
    if not adopt(work, prefix, "-layout", ours):
        try:
            ours.mkdir()
        except FileExistsError:
            pass
        except OSError as e:
            raise OutputError(f"{ours}: cannot create: {e.strerror or e}") from None
    return ours


def _descriptor(desc: object, what: str) -> tuple[str, int | None]:
    """(digest, size) of a manifest's descriptor, or one line saying the manifest is broken."""
    if not isinstance(desc, dict) or not isinstance(desc.get("digest"), str) or not desc["digest"].startswith("sha256:"):
        raise RegistryError(f"the manifest's {what} has no sha256 digest: not an image manifest tpmtls can pull")
    size = desc.get("size")
    return desc["digest"], size if isinstance(size, int) and size >= 0 else None


def _manifest_blobs(client: RegistryClient, ref: Reference, data: bytes, media_type: str,
                    depth: int = 0) -> tuple[list[tuple[bytes, str, str]], dict[str, int | None]]:
    """All manifests (children first) with their digests, and every blob they name with its size."""
    manifests: list[tuple[bytes, str, str]] = []
    blobs: dict[str, int | None] = {}
    doc = json.loads(data)  # client.get_manifest checked it is a JSON object
    if media_type in INDEX_TYPES:
        if depth > 4:
            raise RegistryError(f"{ref}: indexes nested too deeply")
        for child in doc.get("manifests") or []:
            child_digest, _ = _descriptor(child, "index entry")
            cdata, ctype, _ = client.get_manifest(ref.repository, child_digest)
            sub, sub_blobs = _manifest_blobs(client, ref, cdata, ctype, depth + 1)
            manifests += sub
            blobs.update(sub_blobs)
    else:
        config, size = _descriptor(doc.get("config"), "config")
        blobs[config] = size
        for layer in doc.get("layers") or []:
            d, s = _descriptor(layer, "layer")
            blobs[d] = s
    manifests.append((data, media_type, "sha256:" + hashlib.sha256(data).hexdigest()))
    return manifests, blobs


def _to_oci(client: RegistryClient, ref: Reference, layout: Path, data: bytes, media_type: str, digest: str,
            jobs: int, progress: Progress, cache: BlobCache) -> int:
    layout.mkdir(parents=True, exist_ok=True)
    manifests, blobs = _manifest_blobs(client, ref, data, media_type)
    directory = layout / "blobs" / "sha256"
    fetched = download(client, ref.repository, blobs, directory, jobs, progress, cache)
    cache.save()
    for mdata, _, mdigest in manifests:
        write_atomic(blob_path(directory, mdigest), mdata, 0o644)
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
    return fetched


def _to_docker_archive(client: RegistryClient, ref: Reference, layout: Path, archive: Path, data: bytes,
                       media_type: str, jobs: int, progress: Progress, cache: BlobCache) -> int:
    doc = json.loads(data)
    if media_type in INDEX_TYPES:
        chosen, _ = _descriptor(_pick_platform(doc), "index entry")
        data, media_type, _ = client.get_manifest(ref.repository, chosen)
        doc = json.loads(data)
    config, config_size = _descriptor(doc.get("config"), "config")
    layers = [_descriptor(layer, "layer") for layer in doc.get("layers") or []]
    blobs = {config: config_size, **dict(layers)}
    total = sum(s or 0 for s in blobs.values())  # the archive holds them all again
    fetched = download(client, ref.repository, blobs, layout, jobs, progress, cache, also_needed=total)
    tag = f"{ref.registry}/{ref.repository}:{ref.tag or 'latest'}"
    entry = [{"Config": f"{config[7:]}.json", "RepoTags": [tag] if ref.tag else [],
              "Layers": [f"{d[7:]}/layer.tar" for d, _ in layers]}]
    archive.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{archive.name}.tmp-{os.getpid()}-", dir=archive.parent)
    try:
        with os.fdopen(fd, "wb") as out, tarfile.open(fileobj=out, mode="w") as tar:
            tar.add(blob_path(layout, config), arcname=f"{config[7:]}.json")
            for d, _ in layers:  # compressed layer tars: docker load takes them as they are
                tar.add(blob_path(layout, d), arcname=f"{d[7:]}/layer.tar")
            payload = json.dumps(entry).encode()
            info = tarfile.TarInfo("manifest.json")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        os.replace(tmp, archive)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise no_space(archive.parent, total) from None
        if isinstance(e, OSError) and not isinstance(e, OutputError):
            raise OutputError(f"{archive}: cannot write the archive: {e.strerror or e}") from None
        raise
    return fetched


def _load_into_daemon(archive: Path, ref: Reference) -> None:
    import docker
    from docker.errors import DockerException

    try:
        client = docker.from_env(timeout=600)
        with open(archive, "rb") as f:
            client.images.load(f)
    except DockerException as e:
        raise ImageError(f"cannot load {ref} into the Docker daemon: {str(e).splitlines()[0]}") from None
