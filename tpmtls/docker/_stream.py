"""A TLS client connection as an `ssl.SSLObject` over memory BIOs, for `tpmtls daemon-proxy`.

One thread owns each connection and moves ciphertext between the BIOs and a non-blocking
socket itself, so reads and writes never race inside OpenSSL and a half-close (our
close_notify) can be sent while the server's data keeps arriving.
"""

from __future__ import annotations

import socket
import ssl

#: Bytes read from a socket at a time.
CHUNK = 65536
#: Plaintext drained from the fed records at once, at most (the relay's buffer limit).
DRAIN_LIMIT = 1 << 20


class TlsStream:
    """An SSLObject and its raw socket: blocking handshake, then the caller's non-blocking I/O."""

    def __init__(self, raw: socket.socket, context: ssl.SSLContext, host: str, session: ssl.SSLSession | None) -> None:
        self.raw = raw
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = context.wrap_bio(self.incoming, self.outgoing, server_hostname=host, session=session)

    def flush(self) -> None:
        """Send what OpenSSL queued (blocking; handshake and probe only)."""
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
        """Send `data`, read the reply until it is complete or the server closes (the start-up probe)."""
        self.obj.write(data)
        self.flush()
        reply = bytearray()
        while len(reply) < DRAIN_LIMIT:
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

    def drain(self) -> tuple[bytes, bool]:
        """All plaintext the fed records hold; False once the server's close_notify is read."""
        out = bytearray()
        for _ in range(DRAIN_LIMIT // 1024):
            try:
                chunk = self.obj.read(CHUNK)
            except ssl.SSLWantReadError:
                return bytes(out), True
            except ssl.SSLZeroReturnError:
                return bytes(out), False
            if not chunk:
                return bytes(out), False
            out += chunk
        return bytes(out), True

    def close_notify(self) -> None:
        """Queue our close_notify (a half-close: the server's data is still read after it).

        With memory BIOs nothing is read here: every record fed so far has been drained, so
        OpenSSL only queues the alert and keeps accepting the server's records."""
        try:
            self.obj.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass

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


__all__ = ["TlsStream", "CHUNK"]
