"""An OCI distribution client over a (TPM-backed) ssl.SSLContext.

urllib3 (requests' engine) is used directly: uploads stream from re-openable sources
in bounded chunks, `--resolve` connects to an address while SNI and the certificate
check use the registry's name, and every retry is ours to bound.
"""

from __future__ import annotations

import hashlib
import json
import ssl
import threading
import time
from abc import ABC, abstractmethod
from typing import Any, Callable, Iterator
from urllib.parse import urlencode, urlsplit

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import SSLError as Urllib3SSLError

from ..errors import RegistryError
from .auth import Credentials, parse_challenge
from .tokens import get_token

RETRY_STATUS = {408, 429, 500, 502, 503, 504}
ATTEMPTS = 5  # per request, and per upload resync
CONNECT_TIMEOUT = 10.0  # TCP connect and TLS handshake; a silent server fails in this, once
CHUNK = 8 * 1024 * 1024  # upload chunk: a dropped connection costs at most this much again

MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)


def parse_resolve(values: list[str] | None) -> dict[str, str]:
    """curl's --resolve HOST:PORT:ADDR → {"HOST:PORT": "ADDR"}."""
    out: dict[str, str] = {}
    for value in values or []:
        host, _, rest = value.partition(":")
        port, _, addr = rest.partition(":")
        if not host or not port.isdigit() or not addr:
            raise RegistryError(f"--resolve {value!r}: write it as HOST:PORT:ADDRESS")
        out[f"{host}:{port}"] = addr.strip("[]")
    return out


class Source(ABC):
    """A blob's bytes, readable again from the start (an upload resumes by re-reading
    and hashing up to where the registry's copy ends)."""

    size: int | None  # None when unknown before reading (compressed on the fly)

    @abstractmethod
    def chunks(self) -> Iterator[bytes]:
        """The bytes, from the start, in pieces."""


class RegistryClient:
    """One registry, over one connection pool; thread-safe."""

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
        host, _, port = registry.rpartition(":") if ":" in registry else (registry, "", "443")
        self.registry = registry
        self.host = host
        self.port = int(port)
        self.credentials = credentials
        self.client_cert = client_cert  # where our client certificate came from (None: no client cert)
        self._context = context
        self._resolve = dict(resolve or {})
        self._connections = connections
        self._timeout = urllib3.Timeout(connect=CONNECT_TIMEOUT, read=timeout)
        self._pool = self._new_pool(host, self.port, block=True)
        self._others: dict[str, urllib3.HTTPSConnectionPool] = {}  # token servers, storage redirects
        self._auth: dict[str, str] = {}  # scope → Authorization header value
        self._challenge: tuple[str, dict[str, str]] | None = None  # the registry's last 401 challenge
        self._token_lock = threading.Lock()
        self._answered = False  # has the registry ever answered a request?
        self._lock = threading.Lock()
        self.bytes_sent = 0

    def close(self) -> None:
        self._pool.close()
        for pool in list(self._others.values()):
            pool.close()

    # -- requests ------------------------------------------------------------------

    def _new_pool(self, host: str, port: int, *, block: bool) -> urllib3.HTTPSConnectionPool:
        """HTTPS to host:port, connecting where --resolve says; SNI and the certificate check use `host`."""
        address = self._resolve.get(f"{host}:{port}", host)
        return urllib3.HTTPSConnectionPool(
            address, port, ssl_context=self._context, server_hostname=host, assert_hostname=host,
            maxsize=self._connections, block=block, timeout=self._timeout, retries=False,
        )

    def _target(self, url: str, what: str = "a request") -> tuple[Any, str, bool]:
        """(pool, request target, is it the registry itself?). Only https leaves this process:
        credentials and layer data never travel in clear (docs/trust.md, "Registry credentials")."""
        parts = urlsplit(url)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if not parts.scheme and not parts.netloc:
            return self._pool, path, True
        if parts.scheme.lower() != "https":
            raise RegistryError(f"{self.registry}: refusing to send {what} to {url.split('?')[0]}: "
                                "it is not https (credentials and layer data never travel in clear)")
        host, port = parts.hostname or "", parts.port or 443
        if host.lower() == self.host.lower() and port == self.port:
            return self._pool, path, True
        key = f"{host}:{port}"
        with self._lock:
            pool = self._others.get(key)
            if pool is None:
                pool = self._others[key] = self._new_pool(host, port, block=False)
        return pool, path, False

    def request(
        self,
        method: str,
        url: str,
        scope: str,
        *,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        ok: tuple[int, ...] = (200,),
        stream: bool = False,
    ) -> Any:
        """One request with auth and bounded retries (408/429/5xx, lost connections)."""
        authed = False
        for attempt in range(ATTEMPTS):
            pool, target, ours = self._target(url)
            hdrs = {"Host": self.registry if ours else urlsplit(url).netloc, **(headers or {})}
            auth = self._authorization(scope) if ours else None  # never to another host
            if auth:
                hdrs["Authorization"] = auth
            try:
                resp = pool.urlopen(method, target, body=body, headers=hdrs, redirect=False,
                                    preload_content=not stream, assert_same_host=False)
            except Urllib3Error as e:
                if _plain_http(e):
                    raise RegistryError(f"{self.registry}: answers in plain HTTP, not TLS (check the port: "
                                        "tpmtls talks to registries over https only)") from None
                if _tls_refusal(e):
                    raise RegistryError(self._tls_reason(e)) from None
                if not self._answered and _timed_out(e):
                    raise RegistryError(f"{self.registry}: accepted the connection but did not answer within "
                                        f"{CONNECT_TIMEOUT:.0f} s (is a TLS registry listening there?)") from None
                if attempt == ATTEMPTS - 1:
                    if not self._answered and _closed_after_handshake(e):
                        # TLS 1.3: our side of the handshake ends before the server judges our
                        # certificate (RFC 8446, 4.4.2); its alert can be lost in the close.
                        raise RegistryError(self._cert_refused(
                            f"it closed every TLS connection right after the handshake: {_reason(e)}")) from None
                    raise RegistryError(f"{self.registry}: {method} failed after {ATTEMPTS} attempts: {_reason(e)}") from None
                time.sleep(0.2 * 2**attempt)
                continue
            self._answered = True
            if resp.status == 401 and ours and not authed:
                authed = True
                self._challenged(resp, scope, auth)
                continue
            if resp.status in RETRY_STATUS and attempt < ATTEMPTS - 1:
                resp.drain_conn()
                time.sleep(_retry_after(resp, 0.2 * 2**attempt))
                continue
            if resp.status not in ok:
                raise RegistryError(self._refusal(method, target, resp))
            return resp
        raise AssertionError("unreachable")  # pragma: no cover

    def _tls_reason(self, e: Exception) -> str:
        text = str(e)
        low = text.lower()
        if "doesn't match" in low or "hostname mismatch" in low or "ip address mismatch" in low:
            names = text.split("match", 1)[1].strip(" '.") if "either of" in text else ""
            also = f" (it names {names.replace('either of ', '')})" if names else ""
            return f"{self.registry}: its certificate is not valid for the name {self.host!r}{also}"
        if "certificate verify failed" in low:
            return f"{self.registry}: server certificate not trusted (check ca.crt in its certs.d directory)"
        if "alert" in low and ("certificate" in low or "unknown ca" in low or "handshake failure" in low):
            return self._cert_refused(_reason(e))
        return f"{self.registry}: TLS failed: {_reason(e)}"

    def _cert_refused(self, detail: str) -> str:
        """The registry (or its TLS terminator) wants a client certificate it did not get or accept."""
        if self.client_cert is None:
            return (f"{self.registry}: the registry requires a client certificate and none is configured for it "
                    f"(client.cert + client.key in /etc/tpmtls/certs.d/{self.registry}/, or --cert-dir; {detail})")
        return f"{self.registry}: the registry refused our client certificate {self.client_cert} ({detail})"

    def _refusal(self, method: str, target: str, resp: Any) -> str:
        if resp.status in (400, 495, 496):  # NGINX & co. judge client certificates after the handshake
            body = (resp.data or b"")[:2000].decode(errors="replace").lower()
            for words in ("no required ssl certificate was sent", "ssl certificate error",
                          "ssl certificate verify error", "certificate required"):
                if words in body:
                    return self._cert_refused(f"HTTP {resp.status}: {words}")
        detail = ""
        try:
            errors = json.loads(resp.data or b"{}").get("errors") or []
            detail = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
        except (ValueError, AttributeError):
            pass
        if resp.status == 401:
            who = f" as {self.credentials.username} ({self.credentials.source})" if self.credentials else ""
            return f"{self.registry}: authentication failed{who}: {detail or 'unauthorized'}"
        if resp.status == 403:
            return f"{self.registry}: access denied for {target.split('?')[0]}: {detail or 'forbidden'}"
        return f"{self.registry}: {method} {target.split('?')[0]} answered {resp.status}{': ' + detail if detail else ''}"

    def _authorization(self, scope: str) -> str | None:
        """The Authorization value for `scope`: known, or fetched once (under a lock, so parallel
        jobs share one token per scope) when the registry has already told us how."""
        auth = self._auth.get(scope)
        if auth is not None or self._challenge is None:
            return auth
        with self._token_lock:
            if scope not in self._auth:
                self._auth[scope] = self._obtain(scope)
            return self._auth[scope]

    def _challenged(self, resp: Any, scope: str, used: str | None) -> None:
        """A 401: remember the challenge, and get a new Authorization for `scope` unless another
        job already replaced the one this request used."""
        header = resp.headers.get("WWW-Authenticate", "")
        resp.drain_conn()
        self._challenge = parse_challenge(header)
        if self._challenge[0] not in ("basic", "bearer") or (self._challenge[0] == "bearer"
                                                            and "realm" not in self._challenge[1]):
            raise RegistryError(f"{self.registry}: unsupported authentication challenge {header!r}")
        with self._token_lock:
            current = self._auth.get(scope)
            if current is not None and current != used:
                return  # refreshed by another job meanwhile
            self._auth[scope] = self._obtain(scope)

    def _obtain(self, scope: str | None) -> str:
        """Answer the registry's challenge for `scope`: Basic credentials or a bearer token."""
        assert self._challenge is not None
        scheme, params = self._challenge
        if scheme == "basic":
            if self.credentials is None:
                raise RegistryError(f"{self.registry}: needs a login (docker login, a credential helper, or --username)")
            return self.credentials.basic()
        return f"Bearer {get_token(self, params, scope)}"

    def token_pool(self, realm: str) -> tuple[Any, str]:
        """Pool and target for a token realm (https only, --resolve applies)."""
        pool, target, _ = self._target(realm, "credentials")
        return pool, target

    # -- the API -------------------------------------------------------------------

    def check(self) -> None:
        """GET /v2/: reachable, TLS accepted, authentication understood and (with credentials)
        accepted — before any image is read or saved. Asks for no scope, like docker."""
        resp = self.request("GET", "/v2/", "", ok=(200, 401))
        resp.drain_conn()
        if resp.status == 401 and self.credentials is not None and self._challenge and self._challenge[0] == "bearer":
            self._auth[""] = self._obtain(None)  # the token server accepts our credentials
        elif resp.status == 401 and self.credentials is not None:
            raise RegistryError(self._refusal("GET", "/v2/", resp))

    def blob_exists(self, repo: str, digest: str) -> bool:
        resp = self.request("HEAD", f"/v2/{repo}/blobs/{digest}", _push(repo), ok=(200, 404))
        resp.drain_conn()
        return resp.status == 200

    def mount(self, repo: str, digest: str, source_repo: str) -> str | None:
        """Cross-repository mount: None when mounted (201), else the upload URL (202)."""
        query = urlencode({"mount": digest, "from": source_repo})
        scope = f"{_push(repo)} repository:{source_repo}:pull"
        resp = self.request("POST", f"/v2/{repo}/blobs/uploads/?{query}", scope, ok=(201, 202),
                            headers={"Content-Length": "0"})
        resp.drain_conn()
        return None if resp.status == 201 else resp.headers["Location"]

    def start_upload(self, repo: str) -> tuple[str, int]:
        resp = self.request("POST", f"/v2/{repo}/blobs/uploads/", _push(repo), ok=(202,),
                            headers={"Content-Length": "0"})
        resp.drain_conn()
        return resp.headers["Location"], int(resp.headers.get("OCI-Chunk-Min-Length") or 0)

    def upload(self, repo: str, source: Source, expected: str | None, progress: Callable[[int], None],
               location: str | None = None, cancel: threading.Event | None = None) -> tuple[str, int]:
        """Chunked, resumable upload; returns (digest, size). Verifies `expected` if given.

        A lost connection or a 416 resyncs from the upload's `Range` (GET on the upload
        URL) and sends only what the registry lacks; a vanished upload starts again.
        """
        if location is None:
            location, min_chunk = self.start_upload(repo)
        else:
            min_chunk = 0
        chunk_size = max(CHUNK, min_chunk)
        offset = 0
        for _attempt in range(ATTEMPTS * 2):
            try:
                location, digest, size = self._send_from(repo, location, source, offset, chunk_size, progress, cancel)
                break
            except _Resync as r:
                location, offset = self._resync(repo, r.location)
                progress(-1)
        else:
            raise RegistryError(f"{self.registry}: upload to {repo} kept failing; gave up after {ATTEMPTS * 2} resyncs")
        if expected is not None and digest != expected:
            raise RegistryError(f"{self.registry}: blob content does not match its digest {expected} (got {digest})")
        sep = "&" if "?" in location else "?"
        resp = self.request("PUT", f"{location}{sep}{urlencode({'digest': digest})}", _push(repo), ok=(201,),
                            headers={"Content-Length": "0"})
        resp.drain_conn()
        got = resp.headers.get("Docker-Content-Digest")
        if got and got != digest:
            raise RegistryError(f"{self.registry}: registry stored {got}, we sent {digest}")
        return digest, size

    def _send_from(self, repo: str, location: str, source: Source, offset: int, chunk_size: int,
                   progress: Callable[[int], None], cancel: threading.Event | None) -> tuple[str, str, int]:
        """One pass over `source`: hash all of it, send what lies past `offset` in PATCHes
        of `chunk_size` bytes streamed straight from the source (no chunk in memory)."""
        feed = _Feed(source, cancel)
        feed.skip(offset)
        while True:
            length = min(chunk_size, source.size - offset) if source.size is not None else None
            if length == 0 or feed.done:
                break
            location, sent = self._patch(repo, location, offset, feed.take(chunk_size), length, progress)
            offset += sent
            if sent == 0:
                break
        return location, "sha256:" + feed.hasher.hexdigest(), offset

    def _patch(self, repo: str, location: str, start: int, body: Iterator[bytes], length: int | None,
               progress: Callable[[int], None]) -> tuple[str, int]:
        """Stream one PATCH. With a known length: Content-Length and Content-Range (OCI
        chunked upload); with an unknown one (gzip on the fly): chunked transfer encoding,
        which distribution appends as it reads."""
        headers = {"Content-Type": "application/octet-stream"}
        if length is not None:
            headers["Content-Length"] = str(length)
            headers["Content-Range"] = f"{start}-{start + length - 1}"
        pool, target, ours = self._target(location, "layer data")
        headers["Host"] = self.registry if ours else urlsplit(location).netloc
        auth = self._authorization(_push(repo)) if ours else None  # never to a storage host
        if auth:
            headers["Authorization"] = auth
        counted = _Counted(body)
        try:
            resp = pool.urlopen("PATCH", target, body=counted, headers=headers, redirect=False,
                                assert_same_host=False, preload_content=True, chunked=length is None)
        except Urllib3Error as e:
            self.bytes_sent += counted.n
            if _tls_refusal(e):
                raise RegistryError(self._tls_reason(e)) from None
            raise _Resync(location) from None
        self.bytes_sent += counted.n
        if resp.status == 416 or resp.status in RETRY_STATUS:
            raise _Resync(location)
        if resp.status == 401 and ours:
            self._challenged(resp, _push(repo), auth)
            raise _Resync(location)
        if resp.status != 202:
            raise RegistryError(self._refusal("PATCH", target, resp))
        progress(counted.n)
        return resp.headers.get("Location", location), counted.n

    def _resync(self, repo: str, location: str) -> tuple[str, int]:
        """Where the registry's copy of an upload ends; a new upload if it is gone.

        distribution 2.x signs the offset into the upload URL (`_state`) and, once a cut
        request left more bytes than that, answers even this status GET with 404
        BLOB_UPLOAD_INVALID and cancels the upload; v3 and other registries answer the
        Range. So a cut *between* requests resumes everywhere, a cut *inside* a request
        resumes where the registry allows it and otherwise starts a fresh upload.
        """
        resp = self.request("GET", location, _push(repo), ok=(204, 404))
        resp.drain_conn()
        if resp.status == 404:
            new, _ = self.start_upload(repo)
            return new, 0
        last = (resp.headers.get("Range") or "0--1").rpartition("-")[2]
        return resp.headers.get("Location", location), int(last) + 1

    def put_manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> str:
        resp = self.request("PUT", f"/v2/{repo}/manifests/{ref}", _push(repo), body=data, ok=(201,),
                            headers={"Content-Type": media_type, "Content-Length": str(len(data))})
        resp.drain_conn()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        got = resp.headers.get("Docker-Content-Digest")
        if got and got != digest:
            raise RegistryError(f"{self.registry}: registry computed {got} for the manifest we sent as {digest}")
        return digest

    def get_manifest(self, repo: str, ref: str) -> tuple[bytes, str, str]:
        resp = self.request("GET", f"/v2/{repo}/manifests/{ref}", _pull(repo), headers={"Accept": ", ".join(MANIFEST_TYPES)},
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
        resp = self.request("GET", f"/v2/{repo}/blobs/{digest}", _pull(repo), ok=(200, 301, 302, 303, 307, 308),
                            stream=True)
        if resp.status != 200:  # storage redirect: https only, our credentials stay with the registry
            location = resp.headers.get("Location", "")
            resp.drain_conn()
            resp = self.request("GET", location, _pull(repo), ok=(200,), stream=True)
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


class _Feed:
    """A single pass over a blob's bytes: everything read is hashed; `take(n)` hands out
    the next n bytes as pieces, splitting a source piece where a chunk ends."""

    def __init__(self, source: Source, cancel: threading.Event | None) -> None:
        self._it = iter(source.chunks())
        self._pending = b""
        self._cancel = cancel
        self.hasher = hashlib.sha256()
        self.done = False

    def _next(self) -> bytes:
        if self._pending:
            data, self._pending = self._pending, b""
            return data
        if self._cancel is not None and self._cancel.is_set():
            raise RegistryError("interrupted")
        data = next(self._it, b"")
        if not data:
            self.done = True
        self.hasher.update(data)  # the digest covers the whole blob, resent or not
        return data

    def skip(self, n: int) -> None:
        """Read (and hash) the next n bytes without sending them: what the registry has."""
        for _ in self.take(n):
            pass

    def _peek(self) -> None:
        self._pending = self._next()

    def take(self, n: int) -> Iterator[bytes]:
        while n > 0:
            data = self._next()
            if not data:
                return
            if len(data) > n:
                self._pending = data[n:]
                data = data[:n]
            n -= len(data)
            yield data
        if not self._pending and not self.done:
            self._peek()  # learn now whether anything is left


class _Counted:
    """An iterable request body that counts what went out (for bytes_sent and progress)."""

    def __init__(self, body: Iterator[bytes]) -> None:
        self.body = body
        self.n = 0

    def __iter__(self) -> Iterator[bytes]:
        for data in self.body:
            self.n += len(data)
            yield data


class _Resync(Exception):
    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


def _push(repo: str) -> str:
    return f"repository:{repo}:pull,push"


def _pull(repo: str) -> str:
    return f"repository:{repo}:pull"


def _tls_refusal(e: Exception) -> bool:
    """A TLS error that retrying cannot fix (certificates, alerts) vs. a lost connection."""
    if not isinstance(e, Urllib3SSLError) and "SSL" not in type(getattr(e, "reason", None)).__name__:
        return False
    low = str(e).lower()
    return any(w in low for w in ("certificate", "alert", "handshake", "doesn't match", "verify failed", "unknown ca"))


def _plain_http(e: Exception) -> bool:
    """Our ClientHello reached a plain-HTTP server (never transient: not retried)."""
    low = str(e).lower()
    return any(w in low for w in ("wrong version number", "http request", "record layer failure",
                                  "packet length too long", "unknown protocol"))


def _timed_out(e: Exception) -> bool:
    from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ReadTimeoutError

    if isinstance(e, NewConnectionError):  # urllib3 makes "connection refused" a ConnectTimeoutError
        return "timed out" in str(e).lower()
    return isinstance(e, (ConnectTimeoutError, ReadTimeoutError)) or "timed out" in str(e).lower()


def _closed_after_handshake(e: Exception) -> bool:
    low = str(e).lower()
    return "eof occurred in violation of protocol" in low or "unexpected eof" in low or "connection reset" in low


def _retry_after(resp: Any, default: float) -> float:
    try:
        return min(10.0, float(resp.headers.get("Retry-After", default)))
    except ValueError:
        return default


def _reason(e: Exception) -> str:
    """The innermost cause of a urllib3 error, without its wrapping ("... (Caused by X('…'))")."""
    text = str(e)
    if "Caused by " in text:
        text = text.split("Caused by ", 1)[1]
        if text.endswith(")"):
            text = text[:-1]  # the ")" that closed "(Caused by"
    text = text.strip()
    while text.startswith(("'", '"')) and text.endswith(("'", '"')) and len(text) > 1:
        text = text[1:-1]
    return text[:200]
