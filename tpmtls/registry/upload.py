"""Chunked, resumable blob uploads (OCI distribution spec, "pushing a blob in chunks").

A blob goes in PATCHes of at most CHUNK bytes streamed straight from its source (no chunk
in memory), hashed as it is read. A lost connection, a 416 or a 5xx resyncs from the
upload's `Range` (GET on the upload URL) and sends only what the registry lacks (the bytes
before it are read and hashed again, not sent); a vanished upload starts again; the final
PUT names the digest. Authorization (auth.py) goes only to the registry, never to a storage
host an upload URL may point at.
"""

from __future__ import annotations

import hashlib
import threading
from typing import TYPE_CHECKING, Callable, Iterator
from urllib.parse import urlencode

from ..errors import RegistryError
from .auth import Auth, push_scope
from .transport import ATTEMPTS, ONCE, RETRY_STATUS, TransportError

if TYPE_CHECKING:
    from .sources import Source

CHUNK = 8 * 1024 * 1024  # upload chunk: a dropped connection costs at most this much again


class BlobUploads:
    """Blob uploads to one registry, through its authorization; `bytes_sent` counts what went
    out, resent bytes included (push reports it)."""

    def __init__(self, auth: Auth) -> None:
        self.auth = auth
        self.transport = auth.transport
        self.registry = auth.registry
        self.bytes_sent = 0

    def start(self, repo: str) -> tuple[str, int]:
        """A new upload session: (its URL, the registry's minimum chunk size or 0)."""
        resp = self.auth.request("POST", f"/v2/{repo}/blobs/uploads/", push_scope(repo), ok=(202,),
                                 headers={"Content-Length": "0"})
        resp.drain_conn()
        return resp.headers["Location"], int(resp.headers.get("OCI-Chunk-Min-Length") or 0)

    def upload(self, repo: str, source: Source, expected: str | None, progress: Callable[[int], None],
               location: str | None = None, cancel: threading.Event | None = None) -> tuple[str, int]:
        """Upload `source` to `repo` (to `location`, an upload already started, if given);
        returns (digest, size). Verifies `expected` if given. `progress` gets the bytes of
        each accepted chunk, and -1 when a resync starts the count again."""
        if location is None:
            location, min_chunk = self.start(repo)
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
        resp = self.auth.request("PUT", f"{location}{sep}{urlencode({'digest': digest})}", push_scope(repo), ok=(201,),
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
        ours = self.transport.is_home(location)
        auth = self.auth.header(push_scope(repo)) if ours else None  # never to a storage host
        if auth:
            headers["Authorization"] = auth
        counted = _Counted(body)
        try:
            resp = self.transport.send("PATCH", location, body=counted, headers=headers, chunked=length is None,
                                       retries=ONCE, what="layer data")
        except TransportError as e:
            self.bytes_sent += counted.n
            if not e.transient:
                raise
            raise _Resync(location) from None
        self.bytes_sent += counted.n
        if resp.status == 416 or resp.status in RETRY_STATUS:
            raise _Resync(location)
        if resp.status == 401 and ours:
            self.auth.challenged(resp, push_scope(repo), auth)
            raise _Resync(location)
        if resp.status != 202:
            raise RegistryError(self.transport.refusal("PATCH", location, resp, self.auth.credentials))
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
        resp = self.auth.request("GET", location, push_scope(repo), ok=(204, 404))
        resp.drain_conn()
        if resp.status == 404:
            new, _ = self.start(repo)
            return new, 0
        last = (resp.headers.get("Range") or "0--1").rpartition("-")[2]
        return resp.headers.get("Location", location), int(last) + 1


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
