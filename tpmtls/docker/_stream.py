"""One upstream TLS connection over memory BIOs, and the byte pump between it and a local
client socket: what `daemon-proxy` forwards each docker CLI connection through.

One SSLObject per connection, driven by one thread, so reads and writes never race inside
OpenSSL. Half-closes pass through: the client's end of input becomes a TLS close_notify
upstream while the server's output keeps flowing back.
"""

from __future__ import annotations

import selectors
import socket
import ssl
import threading
from typing import Callable

#: Bytes buffered per direction before we stop reading from the faster side.
BUFFER_LIMIT = 1 << 20
CHUNK = 65536


class TlsStream:
    """An SSLObject over memory BIOs and its raw socket: blocking handshake, then non-blocking I/O."""

    def __init__(self, raw: socket.socket, context: ssl.SSLContext, host: str, session: ssl.SSLSession | None) -> None:
        self.raw = raw
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = context.wrap_bio(self.incoming, self.outgoing, server_hostname=host, session=session)

    def flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.raw.sendall(data)

    def _feed(self) -> None:
        data = self.raw.recv(CHUNK)
        if not data:
            raise ConnectionResetError("the server closed the connection during the TLS handshake")
        self.incoming.write(data)

    def handshake(self) -> None:
        for _ in range(1000):  # a handshake is a handful of flights; bounded all the same
            try:
                self.obj.do_handshake()
                self.flush()
                return
            except ssl.SSLWantReadError:
                self.flush()
                self._feed()
        raise ssl.SSLError("TLS handshake did not finish")

    def request(self, data: bytes) -> bytes:
        """Send `data`, read until the server closes (probe only; blocking with the socket's timeout)."""
        self.obj.write(data)
        self.flush()
        reply = bytearray()
        while len(reply) < BUFFER_LIMIT:
            try:
                chunk = self.obj.read(CHUNK)
                if not chunk:
                    break
                reply += chunk
                if b"\r\n\r\n" in reply and _complete(bytes(reply)):
                    break
            except ssl.SSLWantReadError:
                self.flush()
                data = self.raw.recv(CHUNK)
                if not data:
                    break
                self.incoming.write(data)
            except ssl.SSLZeroReturnError:
                break
        return bytes(reply)

    def close(self) -> None:
        try:
            self.raw.close()
        except OSError:
            pass


def _complete(reply: bytes) -> bool:
    head, _, body = reply.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return len(body) >= int(value.strip())
    return False


def pump(client: socket.socket, tls: TlsStream, stop: threading.Event, on_first_reply: Callable[[], None],
          half_close: bool = True) -> tuple[int, int, BaseException | None]:
    """Forward both ways until both directions are closed; returns (bytes up, bytes down, error).

    Without `half_close` the client's end of input is not forwarded: on a hijacked
    stream we wait for the server to finish, otherwise the client is done.
    """
    raw = tls.raw
    client.setblocking(False)
    raw.setblocking(False)
    to_upstream = bytearray()  # ciphertext for the server
    to_client = bytearray()  # plaintext for the CLI
    client_reading = upstream_reading = True
    client_write_open = True
    up = down = 0
    hijacked = False
    error: BaseException | None = None
    sel = selectors.DefaultSelector()
    try:
        while not stop.is_set():
            if not upstream_reading and not to_client:
                if client_write_open:
                    _shutdown_write(client)  # the server is done: the CLI sees the end of the stream
                    client_write_open = False
                if not client_reading:
                    break
            cev = (selectors.EVENT_READ if client_reading and len(to_upstream) < BUFFER_LIMIT else 0) | \
                  (selectors.EVENT_WRITE if to_client else 0)
            uev = (selectors.EVENT_READ if upstream_reading and len(to_client) < BUFFER_LIMIT else 0) | \
                  (selectors.EVENT_WRITE if to_upstream else 0)
            for sock, ev in ((client, cev), (raw, uev)):
                try:
                    sel.unregister(sock)
                except KeyError:
                    pass
                if ev:
                    sel.register(sock, ev)
            if not cev and not uev:
                break
            for key, mask in sel.select(timeout=0.5):
                if key.fileobj is client:
                    if mask & selectors.EVENT_READ:
                        data = client.recv(CHUNK)
                        if data:
                            up += len(data)
                            hijacked = hijacked or b"upgrade: tcp" in data.lower()
                            tls.obj.write(data)
                        else:
                            client_reading = False
                            if half_close:
                                _close_notify(tls)  # the CLI closed stdin: a TLS half-close upstream
                            elif not hijacked:
                                break  # a plain API connection the CLI is done with
                        to_upstream += tls.outgoing.read()
                    if mask & selectors.EVENT_WRITE and to_client:
                        sent = client.send(to_client)
                        del to_client[:sent]
                else:
                    if mask & selectors.EVENT_READ:
                        data = raw.recv(CHUNK)
                        if not data:
                            upstream_reading = False
                        else:
                            tls.incoming.write(data)
                            first = down == 0
                            got, upstream_reading = _drain(tls)
                            to_client += got
                            down += len(got)
                            if first and got:
                                on_first_reply()  # a TLS 1.3 ticket has arrived by now
                        to_upstream += tls.outgoing.read()
                    if mask & selectors.EVENT_WRITE and to_upstream:
                        sent = raw.send(to_upstream)
                        del to_upstream[:sent]
    except (ssl.SSLError, OSError) as e:
        error = e
    finally:
        sel.close()
    return up, down, error


def _drain(tls: TlsStream) -> tuple[bytes, bool]:
    """All plaintext the fed records hold; False once the server's close_notify is read."""
    out = bytearray()
    for _ in range(BUFFER_LIMIT // 1024):
        try:
            chunk = tls.obj.read(CHUNK)
        except ssl.SSLWantReadError:
            return bytes(out), True
        except ssl.SSLZeroReturnError:
            return bytes(out), False
        if not chunk:
            return bytes(out), False
        out += chunk
    return bytes(out), True


def _close_notify(tls: TlsStream) -> None:
    # With memory BIOs nothing is read here: every record fed so far has been drained, so
    # OpenSSL only queues our close_notify and keeps accepting the server's data after it.
    try:
        tls.obj.unwrap()
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
        pass


def _shutdown_write(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


__all__ = ["BUFFER_LIMIT", "CHUNK", "TlsStream", "pump"]
