"""The terms a daemon-proxy connection lives by (head size and deadlines, buffers, the linger at
its end), what it reports when it ends, and the answer it gives when it refuses a request."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass

from ._stream import CHUNK

#: Largest request head (request line and fields) read; larger gets 431. dockerd's own limit is
#: Go's 1 MiB, but the CLI's largest heads (X-Registry-Config with every registry's
#: credentials) are a few KiB.
MAX_HEAD = 65536
#: Seconds a request head may take to arrive once it starts (and the first one after connecting).
HEAD_TIMEOUT = 10.0
#: Seconds a kept-alive connection may wait for its next request. Longer than Go's
#: IdleConnTimeout (90 s), so the CLI's transport drops an idle connection before we do.
IDLE_TIMEOUT = 120.0
#: Bytes buffered per direction before the faster side is read no more.
BUFFER_LIMIT = 1 << 20
#: Seconds spent at the end delivering the last bytes and reading the client's remaining input
#: (closing with unread input would reset the connection and lose our last answer).
LINGER = 2.0
#: Seconds a closing connection may make no progress delivering its last bytes.
CLOSING_STALL = 30.0
#: How often a half-closed client is checked for having closed altogether.
HANGUP_CHECK = 1.0

REASONS = {400: "Bad Request", 403: "Forbidden", 408: "Request Timeout", 431: "Request Header Fields Too Large",
            501: "Not Implemented", 502: "Bad Gateway"}


@dataclass
class Outcome:
    """What happened on one connection, for the proxy's log line and counters."""

    requests: int = 0
    up: int = 0  # bytes from the client
    down: int = 0  # bytes to the client
    resumed: bool | None = None  # None: no upstream connection was opened
    refused: str = ""  # why a request was answered here instead of forwarded
    ended: str = ""  # how the connection ended
    failed: bool = False  # the upstream could not be reached or refused us


def refusal(status: int, message: str) -> bytes:
    """A response as a daemon's (the CLI prints 'Error response from daemon: …'), closing the connection."""
    body = json.dumps({"message": f"tpmtls daemon-proxy: {message}"}).encode()
    return (f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\nContent-Type: application/json\r\n"
            f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def linger(client: socket.socket, pending: bytes) -> int:
    """Send `pending`, end our side, and read the client's leftover input for a moment (closing with
    unread input would reset the connection and lose our last answer); returns the bytes sent."""
    sent = 0
    try:
        client.settimeout(LINGER)
        if pending:
            client.sendall(pending)
            sent = len(pending)
        client.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + LINGER
        for _ in range(64):  # bounded: at most 64 reads of the client's leftover input
            if time.monotonic() >= deadline or not client.recv(CHUNK):
                break
    except OSError:
        pass
    return sent
