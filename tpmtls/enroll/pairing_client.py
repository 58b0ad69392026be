"""`tpmtls enroll HOST[:PORT]` and `tpmtls.ensure_server_enrolled(store, host)` (docs/pairing.md).

The client authenticates with its TPM key (certified by the store's CA) and trusts the
agent's key by its fingerprint: given out of band (`--expect-fingerprint`), or recorded
on first use in the store and said so plainly. The pin is checked right after the TLS
handshake, before a single byte of HTTP is sent; only then is a server certificate for
exactly that key issued and POSTed, and the HTTP status checked. docker-easyenroll
connected with CERT_NONE and POSTed with verify=False: a man in the middle on first
contact got a CA-signed certificate for the address (docs/facts-docker.md, "docker-easyenroll,
read in its source").
"""

from __future__ import annotations

import http.client
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..errors import EnrollmentError, HandshakeError
from ..tls.diagnosis import Cause, certificate_dates, diagnose
from .pairing_agent import ENROLL_PATH
from .store import CertificateStore, StoreLike, as_store, key_fingerprint, normalize_fingerprint, split_host

_TIMEOUT = 30.0


@dataclass(frozen=True)
class Enrollment:
    """The outcome: where the daemon's DOCKER_CERT_PATH is and whether this call changed anything."""

    host: str
    port: int
    cert_path: Path
    fingerprint: str
    trust: str  # "expected" (given out of band), "pinned" (recorded earlier) or "first-use"
    changed: bool

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"


def pairing_context(store: CertificateStore, tcti: str | None = None) -> ssl.SSLContext:
    """Client context with the TPM client key. The agent's certificate is self-signed, so the
    chain is not what is verified here: the caller checks the key fingerprint (the pin)
    before sending anything."""
    from ..tls import ssl_context

    cert, key = store.ensure_client(tcti)
    ctx = ssl_context(cert, key, store.ca_dir / "ca.crt", tcti=tcti)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # replaced by the fingerprint pin in connect_pinned()
    return ctx


def connect_pinned(ctx: ssl.SSLContext, host: str, port: int, expected: str | None,
                   timeout: float = _TIMEOUT, *, client_cert: Path | None = None) -> tuple[ssl.SSLSocket, str, object]:
    """TLS to the agent; returns (socket, fingerprint, public key). Raises, having sent no
    application data, when the fingerprint is not `expected`. `client_cert`: the certificate
    `ctx` presents, whose dates explain a refusal."""
    where = f"{host}:{port}"
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        raise HandshakeError(f"{where}: cannot connect ({e.strerror or e}): is enroll-agent listening there?") from None
    try:
        server_hostname = None if _is_ip(host) else host
        tls = ctx.wrap_socket(raw, server_hostname=server_hostname)
    except (ssl.SSLError, OSError) as e:
        raw.close()
        raise _tls_failure(where, e, client_cert, handshake_done=False) from None
    der = tls.getpeercert(binary_form=True)
    if not der:
        tls.close()
        raise HandshakeError(f"{where}: presented no certificate")
    public = x509.load_der_x509_certificate(der).public_key()
    seen = key_fingerprint(public)
    if expected is not None and seen != expected:
        tls.close()
        raise HandshakeError(f"{where}: presented key SHA-256 {seen}, expected {expected}: not the agent you "
                             "paired with (a man in the middle, or a reinstalled host); nothing was sent")
    return tls, seen, public


def post_certificate(tls: ssl.SSLSocket, host: str, port: int, pem: bytes, *, client_cert: Path | None = None) -> None:
    """POST the server certificate on the pinned connection; anything but 201 raises."""
    where = f"{host}:{port}"
    try:
        tls.sendall(
            f"POST {ENROLL_PATH} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/x-pem-file\r\n"
            f"Content-Length: {len(pem)}\r\nConnection: close\r\n\r\n".encode() + pem
        )
        response = http.client.HTTPResponse(tls)  # type: ignore[arg-type]
        response.begin()
        body = response.read(64 * 1024)
    except (OSError, http.client.HTTPException) as e:
        found = diagnose(e)
        if isinstance(e, ssl.SSLError) and (found.refused or found.cause is Cause.CLOSED):
            # TLS 1.3: the server checks our certificate after the handshake and says so with an alert
            raise _tls_failure(where, e, client_cert, handshake_done=True) from None
        raise EnrollmentError(f"{where}: no answer to the enrollment request ({str(e) or type(e).__name__})") from None
    if response.status != 201:
        reason = _message(body) or response.reason
        if response.status in (400, 404) and b"certificate refused" not in body:
            reason += " (not an enroll-agent: is dockerd already running there? then the host is enrolled)"
        raise EnrollmentError(f"{where}: the agent refused the certificate: HTTP {response.status}: {reason}")


def ensure_server_enrolled(store: StoreLike, host: str, *, port: int | None = None,
                           expect_fingerprint: str | None = None, tcti: str | None = None,
                           on_first_use: Callable[[str], None] | None = None,
                           timeout: float = _TIMEOUT) -> Enrollment:
    """Pair with the enroll-agent at `host` (HOST[:PORT], default port 2376) unless already done.

    Idempotent: an enrolled host returns at once without connecting. Otherwise the
    agent's key must match `expect_fingerprint`, or a fingerprint recorded earlier, or
    is trusted on first use (recorded in the store; `on_first_use` is told). Returns the
    host's DOCKER_CERT_PATH directory, for `tpmtls.docker_client` and `daemon-proxy`.
    """
    st = as_store(store)
    name, p = split_host(host)
    if port is not None:
        p = port
    cert_path = st.server_dir(name, p)
    if st.is_enrolled(name, p):
        pinned = st.pinned(name, p) or ""
        return Enrollment(name, p, cert_path, pinned, "pinned", changed=False)
    recorded = st.pinned(name, p)
    expected = normalize_fingerprint(expect_fingerprint) if expect_fingerprint else None
    if expected and recorded and expected != recorded:
        raise HandshakeError(f"{name}:{p}: --expect-fingerprint {expected} differs from the key recorded in "
                             f"{cert_path}/pinned-key.sha256 ({recorded}); remove that file if the host was reinstalled")
    pin = expected or recorded
    trust = "expected" if expected else "pinned" if recorded else "first-use"
    ctx = pairing_context(st, tcti)
    tls, seen, public = connect_pinned(ctx, name, p, pin, timeout, client_cert=st.client_cert)
    try:
        if trust == "first-use":
            st.record_pin(name, p, seen, "trusted-on-first-use")
            if on_first_use is not None:
                on_first_use(seen)
        server_cert = st.issue_server(public, name)
        post_certificate(tls, name, p, server_cert.public_bytes(serialization.Encoding.PEM), client_cert=st.client_cert)
    finally:
        tls.close()
    how = {"expected": "expected-out-of-band", "pinned": "trusted-on-first-use", "first-use": "trusted-on-first-use"}
    path = st.record_server(name, p, server_cert, seen, how[trust])
    return Enrollment(name, p, path, seen, trust, changed=True)


def _tls_failure(where: str, e: OSError, client_cert: Path | None, *, handshake_done: bool) -> HandshakeError:
    """Why the TLS exchange with the agent failed, in the pairing's words (tls/diagnosis.py decides)."""
    found = diagnose(e, ours=client_cert)
    # TLS 1.3: the server judges our certificate after our side of the handshake is done, and
    # a hang-up right then is its refusal with the alert lost
    refused = found.refused or (found.cause is Cause.CLOSED and handshake_done)
    dates = (found.dates or (certificate_dates(client_cert) if client_cert else None)) if refused else None
    if dates or (found.cause is Cause.EXPIRED and found.ours):
        return HandshakeError(f"{where}: the agent refused our client certificate as expired or not yet valid "
                              f"({dates or found.reason}); remove the store's client.crt to have a new key and "
                              "certificate made")
    if refused:
        return HandshakeError(f"{where}: the agent refused our client certificate (is its --ca the CA in the "
                              f"store, ca/ca.crt?): {found.reason}")
    if found.cause is Cause.CLOSED:
        return HandshakeError(f"{where}: closed the connection during the TLS handshake ({found.reason}): is "
                              "enroll-agent listening there, with the store's CA (ca/ca.crt) as its --ca?")
    if found.cause is Cause.NOT_TLS:
        return HandshakeError(f"{where}: does not speak TLS ({found.reason}): is enroll-agent listening there?")
    return HandshakeError(f"{where}: TLS failed: {found.reason}")


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _message(body: bytes) -> str:
    import json

    try:
        return str(json.loads(body)["message"])[:300]
    except (ValueError, KeyError, TypeError):
        return body.decode(errors="replace").strip().splitlines()[0][:300] if body.strip() else ""


__all__ = ["Enrollment", "EnrollmentError", "connect_pinned", "ensure_server_enrolled", "post_certificate"]
