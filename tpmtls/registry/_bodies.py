"""Bodies without copies: a layer streams from a registry's response into one reused buffer
and from there to docker's socket (`tpmtls proxy`) or a file (pull), with no bytes object
and no concatenation per piece.

Measured with py-spy during `docker pull` of 200 MB (docs/proxy.md, "Performance of the
proxy"): 64 KiB `resp.stream()` pieces cost a bytes object per piece, five Python calls
per TLS record in urllib3, and a `b"%x\\r\\n%b\\r\\n"` concatenation per chunked piece.
Here `http.client`'s `readinto` fills a 1 MiB buffer straight from the TLS socket (it
keeps the response's own accounting, so the connection goes back to the pool as usual),
`sendall` writes a view of it, and chunked framing goes out as separate small writes.
"""

from __future__ import annotations

import http.client
from typing import Any, Iterator

BUFFER = 1 << 20  # per response being relayed; ~16 TLS records, one sendall
REQUEST_PIECE = 256 << 10  # request bodies (docker's PATCHes): the most one read takes from the client


class ClientGone(Exception):
    """The docker side closed its connection while we were reading its request body."""


class BrokenBody(Exception):
    """The upstream body ended early or failed after `sent` bytes went to the client."""

    def __init__(self, sent: int, reason: str) -> None:
        super().__init__(reason)
        self.sent = sent


class Counter:
    """Counts the bytes of a request body as urllib3 sends them."""

    def __init__(self, body: Iterator[bytes]) -> None:
        self.body, self.n = body, 0

    def __iter__(self) -> Iterator[bytes]:
        for data in self.body:
            self.n += len(data)
            yield data


def exactly(rfile: Any, length: int) -> Iterator[bytes]:
    """`length` bytes of a request body, as they arrive (at most REQUEST_PIECE per read)."""
    left = length
    while left > 0:
        data = rfile.read1(min(REQUEST_PIECE, left)) if hasattr(rfile, "read1") else rfile.read(min(REQUEST_PIECE, left))
        if not data:
            raise ClientGone()
        left -= len(data)
        yield data


def dechunk(rfile: Any) -> Iterator[bytes]:
    """HTTP/1.1 chunked request body (RFC 9112 7.1) → its data, piece by piece."""
    while True:
        line = rfile.readline(1024)
        if not line:
            raise ClientGone()
        size = int(line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            for _ in range(100):  # trailer fields, then the empty line
                if rfile.readline(8192) in (b"\r\n", b"\n", b""):
                    break
            return
        yield from exactly(rfile, size)
        rfile.readline(8)  # the CRLF after the chunk


def pieces(resp: Any, buffer: memoryview, raw: bool = True) -> Iterator[memoryview]:
    """A urllib3 response's body as views of `buffer` (each valid until the next one).

    `raw`: the bytes as they came, content-encoding and all (what a proxy relays); else a
    body with a Content-Encoding goes through urllib3's decoder. A body that ends early
    ends the iteration early (compare with Content-Length); a failed read raises
    urllib3's or the socket's error."""
    fp = getattr(resp, "_fp", None)  # urllib3 2's http.client response: readinto fills our buffer
    if isinstance(fp, http.client.HTTPResponse) and (raw or not resp.headers.get("Content-Encoding")):
        while True:
            n = fp.readinto(buffer)
            if not n:
                return
            yield buffer[:n]
    for data in resp.stream(len(buffer), decode_content=not raw):
        if data:
            yield memoryview(data)


def relay(resp: Any, sock: Any, buffer: memoryview, chunked: bool, length: int | None) -> int:
    """Copy an upstream response body (not decoded) to the client socket, `chunked` or as it
    is; returns the bytes sent. A body that fails or ends short of `length` (its
    Content-Length) raises BrokenBody: the client must not wait for the rest."""
    from urllib3.exceptions import HTTPError as Urllib3Error

    sent = 0
    try:
        for piece in pieces(resp, buffer):
            if chunked:
                sock.sendall(b"%x\r\n" % len(piece))
                sock.sendall(piece)
                sock.sendall(b"\r\n")
            else:
                sock.sendall(piece)
            sent += len(piece)
    except (OSError, http.client.HTTPException, Urllib3Error) as e:
        raise BrokenBody(sent, type(e).__name__) from None
    if length is not None and sent != length:
        raise BrokenBody(sent, f"upstream body ended at {sent} of {length} bytes")
    if chunked:
        sock.sendall(b"0\r\n\r\n")
    return sent


__all__ = ["BUFFER", "BrokenBody", "ClientGone", "Counter", "dechunk", "exactly", "pieces", "relay"]
