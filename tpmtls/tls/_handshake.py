"""Stdlib sockets and SSL objects: TPM reasons in handshake errors, client session resumption.

A handshake that fails because the TPM could not sign surfaces from OpenSSL as
"EVP lib"; the shim's sign callback recorded why on the handshake's thread
(`provider.last_error()`). These classes clear that record as a handshake starts and
re-raise such a failure as a `TpmHandshakeError` (an `ssl.SSLError` and a tpmtls
`HandshakeError`). `TpmSSLContext` makes them; `inject_into_ssl` installs them on
`ssl.SSLContext` for as long as it is injected.

A client socket of a `TpmSSLContext` with a session cache (`_resume`, on by default)
offers the newest session it has for the server, counts full and resumed handshakes and
the TPM signatures they made, and keeps the new session: at once for TLS 1.2, after the
first read for TLS 1.3 (its tickets come after the handshake).
"""

from __future__ import annotations

import ssl
from contextlib import contextmanager
from typing import Any, Callable, Hashable, Iterator

from ..provider import last_error, signatures_on_this_thread
from ._errors import TpmHandshakeError, clear_tpm_error
from ._resume import SessionCache


@contextmanager
def _tpm_reason() -> Iterator[None]:
    """Re-raise a handshake error caused by a failed TPM signature with the TPM's reason."""
    clear_tpm_error()
    try:
        yield
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError, TpmHandshakeError):
        raise
    except ssl.SSLError as e:
        reason = last_error()  # the sign callback ran on this thread, in this handshake
        if not reason:
            raise
        err = TpmHandshakeError(f"TLS handshake failed: {reason}", e.library, e.reason)
        err.ssl_error = e  # type: ignore[attr-defined]
        raise err from None


class _Resumption:
    """The per-connection half of session resumption, shared by sockets and SSL objects."""

    def __init__(self, cache: SessionCache, server: Hashable) -> None:
        self.cache, self.server = cache, server
        self.signatures = signatures_on_this_thread()
        self.pending = True  # the new session is not stored yet

    @staticmethod
    def start(conn: Any, port: int | None, wait: float = 0.0) -> _Resumption | None:
        """Offer a cached session to a client connection about to shake hands.

        `wait`: how long a blocking socket may wait for another thread's full handshake
        with the same server to yield a session (0 for SSL objects: an event loop must
        never block).
        """
        cache = getattr(conn.context, "sessions", None)
        if cache is None or conn.server_side or not conn.server_hostname:
            return None
        server = (conn.server_hostname, port)
        if conn.session is None:  # the caller did not choose a session
            session = cache.lead_or_wait(server, wait)
            if session is not None:
                try:
                    conn.session = session
                except ValueError:  # made by another context: not ours to offer
                    cache.forget(server)
        return _Resumption(cache, server)

    def failed(self) -> None:
        self.cache.forget(self.server)  # a server that rejects our session must not see it again

    def closed(self) -> None:
        if self.pending:  # never read, so no TLS 1.3 ticket: let waiting threads go on
            self.cache.settled(self.server)

    def done(self, conn: Any) -> None:
        self.cache.count(conn.session_reused, signatures_on_this_thread() - self.signatures)
        self.cache.shaken(self.server)
        self.keep(conn)

    def keep(self, conn: Any) -> None:
        session = conn.session
        if session is not None and conn.version() == "TLSv1.3" and not session.has_ticket:
            return  # TLS 1.3 tickets arrive after the handshake: try again after a read
        self.cache.put(self.server, session)  # also when there is nothing to keep: waiters go on
        self.pending = False


# How long a thread waits for another thread's full handshake with the same server (its
# session) before signing one of its own: a hardware TPM takes 40–250 ms per signature.
_COALESCE_WAIT = 5.0


def _shake(conn: Any, handshake: Callable[[], None]) -> None:
    """Run a socket's or SSL object's handshake: TPM reasons in errors, resumption book-keeping."""
    resume = conn._tpmtls_resume
    try:
        with _tpm_reason():
            handshake()
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
        raise
    except ssl.SSLError:
        if resume is not None:
            resume.failed()
        raise
    if resume is not None:
        resume.done(conn)


def _after_read(conn: Any) -> None:
    """TLS 1.3 tickets arrive after the handshake: keep the session once one has come."""
    resume = conn._tpmtls_resume
    if resume is not None and resume.pending:
        resume.keep(conn)


def _peer_port(sock: ssl.SSLSocket) -> int | None:
    try:
        return int(sock.getpeername()[1])
    except (OSError, IndexError, TypeError):
        return None


class TpmSSLSocket(ssl.SSLSocket):
    """An `ssl.SSLSocket` whose handshake errors name the TPM's reason, resuming sessions."""

    _tpmtls_resume: _Resumption | None = None

    def do_handshake(self, block: bool = False) -> None:
        timeout = self.gettimeout()
        wait = _COALESCE_WAIT if timeout is None else min(timeout, _COALESCE_WAIT)
        self._tpmtls_resume = _Resumption.start(self, _peer_port(self), wait)
        _shake(self, lambda: super(TpmSSLSocket, self).do_handshake(block))

    def read(self, len: int = 1024, buffer: Any = None) -> Any:  # noqa: A002 - ssl's own signature
        data = super().read(len, buffer)
        _after_read(self)
        return data

    def _real_close(self) -> None:
        if self._tpmtls_resume is not None:
            self._tpmtls_resume.closed()
        super()._real_close()  # type: ignore[misc]


class TpmSSLObject(ssl.SSLObject):
    """An `ssl.SSLObject` (asyncio, TLS in TLS): TPM reasons in handshake errors, sessions resumed per name."""

    _tpmtls_resume: _Resumption | None = None

    def do_handshake(self) -> None:
        if self._tpmtls_resume is None:  # non-blocking: called again until it completes
            self._tpmtls_resume = _Resumption.start(self, None)
        _shake(self, super().do_handshake)

    def read(self, len: int = 1024, buffer: Any = None) -> Any:  # noqa: A002 - ssl's own signature
        data = super().read(len, buffer)
        _after_read(self)
        return data


class TpmSSLContext(ssl.SSLContext):
    """What `ssl_context()` returns: an `ssl.SSLContext` making TPM-aware sockets.

    `sessions` is its client session cache (`sessions.stats()`: full and resumed
    handshakes, TPM signatures); None turns resumption off. Loading another certificate
    or other trust anchors empties it.
    """

    sslsocket_class = TpmSSLSocket
    sslobject_class = TpmSSLObject
    sessions: SessionCache | None = None

    def load_cert_chain(self, *args: Any, **kwargs: Any) -> None:
        super().load_cert_chain(*args, **kwargs)
        self._forget_sessions()

    def load_verify_locations(self, *args: Any, **kwargs: Any) -> None:
        super().load_verify_locations(*args, **kwargs)
        self._forget_sessions()

    def load_default_certs(self, *args: Any, **kwargs: Any) -> None:
        super().load_default_certs(*args, **kwargs)
        self._forget_sessions()

    def set_default_verify_paths(self) -> None:
        super().set_default_verify_paths()
        self._forget_sessions()

    def _forget_sessions(self) -> None:
        if self.sessions is not None:
            self.sessions.clear()
