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
                   timeout: float = _TIMEOUT) -> tuple[ssl.SSLSocket, str, object]:
    """TLS to the agent; returns (socket, fingerprint, public key). Raises, having sent no
    application data, when the fingerprint is not `expected`."""
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
        text = str(e)
        lowered = text.lower()
        if "unknown ca" in lowered or "certificate" in lowered or isinstance(e, (ConnectionResetError, BrokenPipeError)):
            raise HandshakeError(f"{where}: the agent refused our client certificate (is its --ca the CA in the "
                                 f"store, ca/ca.crt?): {text[:160]}") from None
        raise HandshakeError(f"{where}: TLS failed: {text[:200]}") from None
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


def post_certificate(tls: ssl.SSLSocket, host: str, port: int, pem: bytes) -> None:
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
        text = str(e)
        if isinstance(e, ssl.SSLError) and ("alert" in text.lower() or "EOF" in text):
            # TLS 1.3: the server checks our certificate after the handshake and says so with an alert
            raise HandshakeError(f"{where}: the agent refused our client certificate (is its --ca the CA in the "
                                 f"store, ca/ca.crt?): {text[:160]}") from None
        raise EnrollmentError(f"{where}: no answer to the enrollment request ({text or type(e).__name__})") from None
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
    tls, seen, public = connect_pinned(ctx, name, p, pin, timeout)
    try:
        if trust == "first-use":
            st.record_pin(name, p, seen, "trusted-on-first-use")
            if on_first_use is not None:
                on_first_use(seen)
        server_cert = st.issue_server(public, name)
        post_certificate(tls, name, p, server_cert.public_bytes(serialization.Encoding.PEM))
    finally:
        tls.close()
    how = {"expected": "expected-out-of-band", "pinned": "trusted-on-first-use", "first-use": "trusted-on-first-use"}
    path = st.record_server(name, p, server_cert, seen, how[trust])
    return Enrollment(name, p, path, seen, trust, changed=True)


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
