"""The pairing client's certificate store: its CA, its TPM client key, one directory per server.

Layout (DIR):
    ca/ca.crt, ca/ca.key        the CA this client manages (`tpmtls ca init`; ca.key 0600)
    client.key, client.crt      the client's key in the TPM (TSS2 PRIVATE KEY) and its certificate
    servers/HOST:PORT/          one enrolled daemon, usable as DOCKER_CERT_PATH as it is:
        ca.pem cert.pem key.pem   Docker's names (CA, client certificate, client TPM key file)
        server.crt                the certificate the daemon now serves (written last: "enrolled")
        pinned-key.sha256         SHA-256 of the daemon's public key, and how it was trusted
Nothing in it is a clear private key except the CA's, which is a software CA by design.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Union

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .._files import write_atomic
from ..docker.files import CertPath
from ..errors import UsageError
from ..pki.ca import FileCA
from ..pki.csr import build_csr

PEM = serialization.Encoding.PEM
DEFAULT_PORT = 2376
_SERVER_DAYS = 825

StoreLike = Union["CertificateStore", str, "os.PathLike[str]"]


def key_fingerprint(public_key: object) -> str:
    """SHA-256 of the DER SubjectPublicKeyInfo, lowercase hex: same for the pairing and final certificate."""
    der = public_key.public_bytes(serialization.Encoding.DER,  # type: ignore[attr-defined]
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def normalize_fingerprint(text: str) -> str:
    """Accept 'ab:cd:…', 'AB CD …' or 'sha256:abcd…'; return 64 lowercase hex digits or raise."""
    s = text.strip().lower()
    if s.startswith("sha256:"):
        s = s[len("sha256:"):]
    s = s.replace(":", "").replace(" ", "")
    if len(s) != 64 or any(c not in "0123456789abcdef" for c in s):
        raise UsageError(f"{text!r} is not a SHA-256 fingerprint (64 hex digits, colons allowed)")
    return s


def split_host(host: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """'HOST', 'HOST:PORT', '[v6]:PORT' → (host, port)."""
    h, port = host.strip(), default_port
    if h.startswith("["):
        end = h.find("]")
        if end < 0:
            raise UsageError(f"{host!r}: unclosed '[' in an IPv6 address")
        rest, h = h[end + 1:], h[1:end]
        if rest:
            if not rest.startswith(":"):
                raise UsageError(f"{host!r}: write HOST[:PORT]")
            port = _port(rest[1:], host)
    elif h.count(":") == 1:
        h, p = h.split(":")
        port = _port(p, host)
    if not h:
        raise UsageError(f"{host!r}: no host name")
    return h, port


def _port(text: str, host: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise UsageError(f"{host!r}: {text!r} is not a port number")
    return int(text)


def san_for(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host.lower())


class CertificateStore:
    """A directory laid out as in this module's docstring; made on first use."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    @property
    def client_key(self) -> Path:
        return self.root / "client.key"

    @property
    def client_cert(self) -> Path:
        return self.root / "client.crt"

    def server_dir(self, host: str, port: int) -> Path:
        name = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return self.root / "servers" / name

    def is_enrolled(self, host: str, port: int) -> bool:
        return (self.server_dir(host, port) / "server.crt").is_file()

    def pinned(self, host: str, port: int) -> str | None:
        """A fingerprint recorded by an earlier trust-on-first-use attempt, if any."""
        path = self.server_dir(host, port) / "pinned-key.sha256"
        try:
            return normalize_fingerprint(path.read_text().split()[0])
        except (OSError, IndexError):
            return None

    def ca(self) -> FileCA:
        """The store's CA, created on first use."""
        if not (self.ca_dir / "ca.crt").exists():
            if not self.root.parent.is_dir():
                raise UsageError(f"{self.root}: directory {self.root.parent} does not exist")
            self.root.mkdir(mode=0o700, exist_ok=True)
            return FileCA.init(self.ca_dir, f"tpmtls pairing CA ({socket.gethostname()})")
        return FileCA.open(self.ca_dir)

    def ensure_client(self, tcti: str | None = None) -> tuple[Path, Path]:
        """(client.crt, client.key): the key created in the TPM and certified by the store's CA once."""
        ca = self.ca()
        if not (self.client_cert.is_file() and self.client_key.is_file()):
            from ..tpm import connect

            tmp_key = self.root / ".client.key.new"
            tmp_key.unlink(missing_ok=True)
            key = connect(tcti).create_key("ecc-p256", tmp_key)
            csr = build_csr(key, f"CN=tpmtls-enroll@{socket.gethostname()}")
            cert = ca.issue(csr)
            os.replace(tmp_key, self.client_key)
            write_atomic(self.client_cert, cert.public_bytes(PEM), 0o644)
        return self.client_cert, self.client_key

    def issue_server(self, public_key: object, host: str) -> x509.Certificate:
        """A serverAuth certificate from the store's CA for the daemon's key, naming `host`."""
        ca = self.ca()
        now = datetime.datetime.now(datetime.timezone.utc)
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(ca.cert.subject)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=_SERVER_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([san_for(host)]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
            .sign(ca.key, hashes.SHA256())
        )

    def record_pin(self, host: str, port: int, fingerprint: str, how: str) -> None:
        d = self.server_dir(host, port)
        d.mkdir(parents=True, exist_ok=True)
        write_atomic(d / "pinned-key.sha256", f"{fingerprint} {how}\n".encode(), 0o644)

    def record_server(self, host: str, port: int, server_cert: x509.Certificate, fingerprint: str, how: str) -> Path:
        """Lay out servers/HOST:PORT/ in a temp dir and rename it into place: all of it or nothing."""
        final = self.server_dir(host, port)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            docker = CertPath(tmp)  # usable as DOCKER_CERT_PATH as it is
            shutil.copyfile(self.ca_dir / "ca.crt", docker.ca)
            shutil.copyfile(self.client_cert, docker.cert)
            shutil.copyfile(self.client_key, docker.key)
            os.chmod(docker.key, 0o600)
            (tmp / "pinned-key.sha256").write_text(f"{fingerprint} {how}\n")
            (tmp / "server.crt").write_bytes(server_cert.public_bytes(PEM))
            os.chmod(tmp, 0o755)
            if final.exists():
                shutil.rmtree(final)  # only a pin from an earlier, unfinished attempt
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final


def as_store(store: StoreLike) -> CertificateStore:
    return store if isinstance(store, CertificateStore) else CertificateStore(store)


__all__ = ["CertificateStore", "DEFAULT_PORT", "key_fingerprint", "normalize_fingerprint", "split_host"]
