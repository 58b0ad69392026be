"""Minimal TLS clients over both OpenSSLs, for tests: one request to an s_server -www.

`host` is the name the client asks for and verifies (None: no SNI, pyOpenSSL only);
`address` where it connects (127.0.0.1 or ::1)."""

from __future__ import annotations

import socket
import struct

REQUEST = b"GET / HTTP/1.0\r\n\r\n"


def stdlib_get(ctx, port: int, host: str = "localhost", *, address: str = "127.0.0.1") -> bytes:
    with socket.create_connection((address, port), timeout=20) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(REQUEST)
            chunks = []
            while True:
                data = tls.recv(65536)
                if not data:
                    break
                chunks.append(data)
            return b"".join(chunks)


def pyopenssl_get(ctx, port: int, host: str | None = "localhost", *, address: str = "127.0.0.1") -> bytes:
    from OpenSSL import SSL

    raw = socket.create_connection((address, port), timeout=20)
    # pyOpenSSL wants a blocking socket (a timeout makes it non-blocking: WantReadError);
    # SO_RCVTIMEO still bounds every read.
    raw.settimeout(None)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 20, 0))
    conn = SSL.Connection(ctx, raw)
    if host is not None:
        conn.set_tlsext_host_name(host.encode())
    conn.set_connect_state()
    try:
        conn.do_handshake()
        conn.sendall(REQUEST)
        chunks = []
        while True:
            try:
                chunks.append(conn.recv(65536))
            except (SSL.ZeroReturnError, SSL.SysCallError):
                break
        return b"".join(chunks)
    finally:
        conn.close()
        raw.close()


def client_subject(page: bytes) -> str | None:
    """The client certificate subject an `s_server -www` page reports (None: no client cert)."""
    import re

    m = re.search(rb"Subject: (CN=[^\n]*)", page)
    return m.group(1).decode().strip() if m else None
