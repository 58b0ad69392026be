"""The enroll-server's own TLS certificate: issued by the file CA for its public name, renewed while it runs.

The certificate names what clients dial (`--public-url https://NAME:PORT`: DNS or IP SAN),
lives `days` and is replaced at two thirds of its life. Renewal loads the new chain into the
live `ssl.SSLContext` on the event-loop thread, the only thread that starts handshakes: a
handshake copies the context's certificate when it begins, so connections already open keep
theirs and new ones get the new one — no request is dropped.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import tempfile
import time
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ..errors import UsageError
from ..pki.ca import FileCA

SERVER_CERT_DAYS = 30.0


def parse_public_url(url: str) -> tuple[str, int]:
    """`https://NAME:PORT` → (NAME, PORT); one clear line for anything else."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/") or parts.query or parts.username:
        raise UsageError(f"--public-url {url!r}: write it as https://NAME[:PORT], the address clients reach this server by")
    host = parts.hostname
    if host in ("0.0.0.0", "::"):  # noqa: S104 - refusing it, not binding it
        raise UsageError(f"--public-url {url!r}: {host} is no address a client can reach; name this server")
    return host, port or 443


def san_for(host: str) -> str:
    try:
        ipaddress.ip_address(host)
        return f"IP:{host}"
    except ValueError:
        return f"DNS:{host}"


class ServerCertificate:
    """A key made here (never written but to a 0600 temp file for the moment OpenSSL reads it) and its certificate."""

    def __init__(self, ca: FileCA, names: list[str], *, days: float = SERVER_CERT_DAYS,
                 clock: Callable[[], float] = time.time) -> None:
        self.ca = ca
        self.names = list(dict.fromkeys(names))
        self.days = days
        self.clock = clock
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.renewals = 0
        self.issued_at = 0.0
        self.cert: x509.Certificate | None = None
        self.load(self.issue())

    def issue(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        """A fresh key and certificate (may sign through a TPM: call it off the event loop)."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self.ca.issue_for(key.public_key(), x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.names[0])]),
                                 server=True, sans=[san_for(n) for n in self.names],
                                 lifetime=datetime.timedelta(days=self.days))
        return key, cert

    def load(self, made: tuple[ec.EllipticCurvePrivateKey, x509.Certificate]) -> None:
        """Put a key and certificate into the live context (on the event-loop thread once serving)."""
        key, cert = made
        with tempfile.TemporaryDirectory(prefix="tpmtls-enroll-") as d:
            kp, cp = Path(d) / "k.pem", Path(d) / "c.pem"
            fd = os.open(kp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
            cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + self.ca.cert.public_bytes(serialization.Encoding.PEM))
            self.context.load_cert_chain(cp, kp)
        if self.cert is not None:
            self.renewals += 1
        self.cert = cert
        self.issued_at = self.clock()

    def due(self) -> bool:
        """Two thirds of the lifetime have passed (by the server's clock)."""
        return self.clock() >= self.issued_at + self.days * 86400.0 * 2 / 3


__all__ = ["SERVER_CERT_DAYS", "ServerCertificate", "parse_public_url", "san_for"]
