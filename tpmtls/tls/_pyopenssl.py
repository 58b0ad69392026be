"""`pyopenssl_context()`: an `OpenSSL.SSL.Context` (pyOpenSSL) whose private key is a TPM key.

pyOpenSSL checks no server name by itself. The client context checks it in its
certificate-verification callback (public pyOpenSSL API), with pyca's
`service_identity` doing the RFC 6125 matching: a DNS name against DNS SANs, an IPv4
or IPv6 address against IP SANs. The callback runs inside the handshake, on every
connection made from the context, so the check cannot be forgotten or skipped by a
caller; a mismatch fails the handshake before any application data is sent.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import weakref
from typing import TYPE_CHECKING, Any, Callable

from ..errors import HandshakeError, TlsSetupError, UsageError
from ..provider import loading, require_cryptography, signatures_on_this_thread
from ..tpm.pool import Pool
from ._errors import clear_tpm_error
from ._keyref import KeyRef, as_bytes, explain, key_file, source
from ._resume import SessionCache

if TYPE_CHECKING:
    from OpenSSL import SSL, crypto


def _name_check(hostname: str) -> Callable[[Any, "crypto.X509", int, int, int], bool]:
    """A pyOpenSSL verify callback: OpenSSL's chain verdict, plus the leaf must name `hostname`."""
    import service_identity
    from service_identity.cryptography import verify_certificate_hostname, verify_certificate_ip_address

    try:
        address: Any = ipaddress.ip_address(hostname)
    except ValueError:
        address = None

    def verify(conn: Any, cert: "crypto.X509", errno: int, depth: int, ok: int) -> bool:
        if not ok or depth != 0:
            return bool(ok)  # keep OpenSSL's verdict on the chain
        leaf = cert.to_cryptography()
        try:
            if address is not None:
                verify_certificate_ip_address(leaf, address)
            else:
                verify_certificate_hostname(leaf, hostname)
        except (service_identity.VerificationError, service_identity.CertificateError) as e:
            # pyOpenSSL re-raises this from do_handshake (and it is an SSL.Error)
            raise _mismatch_error()(f"server certificate does not match {hostname!r}: {e}") from None
        return True

    return verify


@functools.cache
def _mismatch_error() -> type[Exception]:
    """The error of a name mismatch: a tpmtls `HandshakeError` and a pyOpenSSL `SSL.Error`."""
    from OpenSSL import SSL

    class NameMismatch(HandshakeError, SSL.Error):
        """The server's certificate does not name the host we asked for."""

    return NameMismatch


_CB_HANDSHAKE_START, _CB_HANDSHAKE_DONE = 0x10, 0x20  # SSL_CB_* of OpenSSL's ssl.h


def _handshake_start(conn: Any, where: int, ret: int) -> None:
    """Info callback: a handshake starts on this thread; a TPM failure recorded before is stale."""
    if where & _CB_HANDSHAKE_START:
        clear_tpm_error()


class _ClientSessions:
    """The info callback of a pyOpenSSL client context: TPM reasons reset, sessions resumed.

    pyOpenSSL exposes no new-session callback, so the session is taken from the
    connection itself: offered when a handshake starts (SSL_set_session before the
    ClientHello is built), refreshed at every later callback of that connection — TLS
    1.3 tickets arrive after the handshake, and the close_notify of a clean `shutdown()`
    is the last callback with the ticketed session. pyOpenSSL has no SSL_session_reused
    either: a handshake counts as resumed when a session was offered and it needed no
    TPM signature.
    """

    def __init__(self, hostname: str, cache: SessionCache) -> None:
        self.hostname, self.cache = hostname, cache
        # per live connection: (server, session offered, signatures before; -1 once counted)
        self._state: weakref.WeakKeyDictionary[Any, tuple[tuple[str, int | None], bool, int]] = \
            weakref.WeakKeyDictionary()

    def __call__(self, conn: Any, where: int, ret: int) -> None:
        if where & _CB_HANDSHAKE_START:
            clear_tpm_error()
            server = (self.hostname, _peer_port(conn))
            session = self.cache.get(server)
            if session is not None:
                conn.set_session(session)
            self._state[conn] = (server, session is not None, signatures_on_this_thread())
            return
        state = self._state.get(conn)
        if state is None:
            return
        server, offered, signatures = state
        if where & _CB_HANDSHAKE_DONE and signatures >= 0:
            signed = signatures_on_this_thread() - signatures
            self.cache.count(offered and signed == 0, signed)
            self._state[conn] = (server, offered, -1)
        session = conn.get_session()
        if session is not None:
            self.cache.put_pyopenssl(server, session)
        if where & 0x4008 == 0x4008:  # SSL_CB_WRITE_ALERT: close_notify or an error, the end
            self._state.pop(conn, None)


def _peer_port(conn: Any) -> int | None:
    try:
        return int(conn.getpeername()[1])
    except Exception:  # noqa: BLE001 - a memory-BIO connection has no socket
        return None


def _check_hostname(hostname: str) -> None:
    """Refuse names no certificate can match, before any connection."""
    if not hostname.strip() or any(c.isspace() or c == "\0" for c in hostname):
        raise UsageError(f"hostname {hostname!r} cannot be verified: give a DNS name or an IP address")


def pyopenssl_context(
    cert: str | os.PathLike[str] | None = None,
    key: KeyRef | None = None,
    cafile: str | os.PathLike[str] | None = None,
    server: bool = False,
    *,
    hostname: str | None = None,
    password: bytes | str | None = None,
    tcti: str | None = None,
    tls_version: str | None = None,
    pool: Pool | None = None,
    resume: bool = True,
) -> "SSL.Context":
    """An `OpenSSL.SSL.Context` (pyOpenSSL) with a TPM key.

    A client context verifies the server certificate against `cafile` and its name
    against `hostname` (required: pyOpenSSL does no name check of its own); `hostname`
    may be a DNS name or an IPv4/IPv6 address (then it must be in an IP SAN). A server
    context with `cafile` requires client certificates. Needs `import tpmtls` before
    cryptography is imported (see `tpmtls doctor`).

    pyOpenSSL's handshake errors list OpenSSL's codes only (`('tpmtls', '', 'TPM
    operation failed')`); after an `SSL.Error`, `tpmtls.provider.last_error()` on the
    same thread gives the TPM's reason for that handshake, or None when the TPM was
    not the cause (the context resets it as each handshake starts, through its info
    callback: keep it, or clear it yourself if you set your own).

    A client context resumes sessions per server (`resume=False` turns it off; counters
    in `ctx.tpmtls_sessions.stats()`); shut connections down cleanly (`conn.shutdown()`)
    so TLS 1.3 tickets are kept.
    """
    require_cryptography()
    from OpenSSL import SSL, crypto

    if not server and not hostname:
        raise UsageError("a pyOpenSSL client context needs hostname= so the server's name is verified")
    if hostname and not server:
        _check_hostname(hostname)
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD if server else SSL.TLS_CLIENT_METHOD)
    versions = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    if tls_version is not None:
        if tls_version not in versions:
            raise UsageError(f"TLS version {tls_version!r}: use 1.2 or 1.3")
        ctx.set_min_proto_version(versions[tls_version])
        ctx.set_max_proto_version(versions[tls_version])
    try:
        if cafile is not None:
            ctx.load_verify_locations(os.fspath(cafile))
        elif not server:
            ctx.set_default_verify_paths()
    except SSL.Error as e:
        raise TlsSetupError(f"{cafile}: cannot load CA certificates: {e}") from None
    sessions = SessionCache() if resume and not server else None
    setattr(ctx, "tpmtls_sessions", sessions)  # noqa: B010 - pyOpenSSL's Context declares no such attribute
    if sessions is not None and hostname:
        ctx.set_info_callback(_ClientSessions(hostname, sessions))
    else:
        ctx.set_info_callback(_handshake_start)
    if server:
        if cafile is not None:
            ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT)
    else:
        assert hostname is not None
        ctx.set_verify(SSL.VERIFY_PEER, _name_check(hostname))
    if cert is not None:
        if key is None:
            raise UsageError(f"{cert}: a certificate needs its key (key=...)")
        with key_file(key, der=True) as key_path, loading(source(key), tcti, as_bytes(password), pool):
            try:
                ctx.use_certificate_chain_file(os.fspath(cert))
            except SSL.Error as e:
                raise TlsSetupError(f"{cert}: cannot load certificate chain: {e}") from None
            try:
                # DER: OpenSSL asks no passphrase callback, so it never prompts on the terminal;
                # the key's password rides on provider.loading
                ctx.use_privatekey_file(key_path, crypto.FILETYPE_ASN1 if key_path.endswith(".der") else crypto.FILETYPE_PEM)
                ctx.check_privatekey()
            except SSL.Error as e:
                raise explain(e, cert, key, tcti, as_bytes(password)) from None
    return ctx
