"""The OCI distribution API of one registry: check, blobs (exists, mount, upload, get), manifests.

Requests go through the transport (transport.py: pools, --resolve, https only, retries,
errors) with the registry's authorization (tokens per scope).
"""

from __future__ import annotations

import hashlib
import json
import ssl
import threading
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import urlencode

from ..errors import RegistryError
from .auth import Auth, pull_scope, push_scope
from .credentials import Credentials
from .transport import Transport
from .upload import BlobUploads

if TYPE_CHECKING:
    from .sources import Source

MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)


class RegistryClient:
    """One registry, over its transport (a connection pool per host) and authorization; thread-safe."""

    def __init__(
        self,
        registry: str,
        context: ssl.SSLContext,
        *,
        resolve: dict[str, str] | None = None,
        credentials: Credentials | None = None,
        connections: int = 4,
        timeout: float = 120.0,
        client_cert: str | None = None,
    ) -> None:
        self.transport = Transport(registry, context, resolve=resolve, connections=connections, read_timeout=timeout,
                                   client_cert=client_cert)
        self.auth = Auth(self.transport, credentials)
        self.uploads = BlobUploads(self.auth)
        self.registry = registry
        self.credentials = credentials
        self.client_cert = client_cert

    @property
    def bytes_sent(self) -> int:
        """Blob bytes sent so far, resent ones included."""
        return self.uploads.bytes_sent

    def close(self) -> None:
        self.transport.close()

    def request(self, method: str, url: str, scope: str, *, headers: dict[str, str] | None = None,
                body: bytes | None = None, ok: tuple[int, ...] = (200,), stream: bool = False) -> Any:
        """One authorized request (auth.py) over the transport's bounded retries."""
        return self.auth.request(method, url, scope, headers=headers, body=body, ok=ok, stream=stream)

    # -- the API -------------------------------------------------------------------

    def check(self) -> None:
        """GET /v2/: reachable, TLS accepted, authentication understood and (with credentials)
        accepted — before any image is read or saved. Asks for no scope, like docker."""
        resp = self.request("GET", "/v2/", "", ok=(200, 401))
        resp.drain_conn()
        if resp.status == 401 and self.credentials is not None and not self.auth.login():
            raise RegistryError(self.transport.refusal("GET", "/v2/", resp, self.credentials))

    def blob_exists(self, repo: str, digest: str) -> bool:
        resp = self.request("HEAD", f"/v2/{repo}/blobs/{digest}", push_scope(repo), ok=(200, 404))
        resp.drain_conn()
        return resp.status == 200

    def mount(self, repo: str, digest: str, source_repo: str) -> str | None:
        """Cross-repository mount: None when mounted (201), else the upload URL (202)."""
        query = urlencode({"mount": digest, "from": source_repo})
        scope = f"{push_scope(repo)} repository:{source_repo}:pull"
        resp = self.request("POST", f"/v2/{repo}/blobs/uploads/?{query}", scope, ok=(201, 202),
                            headers={"Content-Length": "0"})
        resp.drain_conn()
        return None if resp.status == 201 else resp.headers["Location"]

    def start_upload(self, repo: str) -> tuple[str, int]:
        """A new upload session: (its URL, the registry's minimum chunk size or 0)."""
        return self.uploads.start(repo)

    def upload(self, repo: str, source: Source, expected: str | None, progress: Callable[[int], None],
               location: str | None = None, cancel: threading.Event | None = None) -> tuple[str, int]:
        """Chunked, resumable upload (upload.py); returns (digest, size). Verifies `expected` if given."""
        return self.uploads.upload(repo, source, expected, progress, location, cancel)

    def put_manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> str:
        resp = self.request("PUT", f"/v2/{repo}/manifests/{ref}", push_scope(repo), body=data, ok=(201,),
                            headers={"Content-Type": media_type, "Content-Length": str(len(data))})
        resp.drain_conn()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        got = resp.headers.get("Docker-Content-Digest")
        if got and got != digest:
            raise RegistryError(f"{self.registry}: registry computed {got} for the manifest we sent as {digest}")
        return digest

    def get_manifest(self, repo: str, ref: str) -> tuple[bytes, str, str]:
        resp = self.request("GET", f"/v2/{repo}/manifests/{ref}", pull_scope(repo), headers={"Accept": ", ".join(MANIFEST_TYPES)},
                            ok=(200, 404))
        if resp.status == 404:
            raise RegistryError(f"{self.registry}/{repo}: no manifest {ref!r}")
        data = resp.data
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if ref.startswith("sha256:") and ref != digest:
            raise RegistryError(f"{self.registry}/{repo}: manifest content does not match {ref}")
        media_type = resp.headers.get("Content-Type", "").split(";")[0] or json.loads(data).get("mediaType", "")
        return data, media_type, digest

    def get_blob(self, repo: str, digest: str, write: Callable[[bytes], None]) -> int:
        """Stream a blob to `write`, verifying its digest; returns its size."""
        resp = self.request("GET", f"/v2/{repo}/blobs/{digest}", pull_scope(repo), ok=(200, 301, 302, 303, 307, 308),
                            stream=True)
        if resp.status != 200:  # storage redirect: https only, our credentials stay with the registry
            location = resp.headers.get("Location", "")
            resp.drain_conn()
            resp = self.request("GET", location, pull_scope(repo), ok=(200,), stream=True)
        hasher, size = hashlib.sha256(), 0
        try:
            for data in resp.stream(1 << 20):
                hasher.update(data)
                size += len(data)
                write(data)
        finally:
            resp.release_conn()
        if "sha256:" + hasher.hexdigest() != digest:
            raise RegistryError(f"{self.registry}/{repo}: blob {digest} arrived with other content")
        return size
