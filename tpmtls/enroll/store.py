"""The pairing client's certificate store: its CA, its TPM client key, one directory per server.

Layout (DIR):
    ca/ca.crt, ca/ca.key        the CA this client manages (`tpmtls ca init`; ca.key 0600)
    policy.json                 optional: how long the certificates it issues live (`StorePolicy`)
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
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from .._files import check_directory, read_json, write_atomic
from .._hosts import is_host
from ..docker.files import CertPath
from ..errors import UsageError
from ..pki.ca import FileCA
from ..pki.csr import build_csr
from .server_cert import san_for

PEM = serialization.Encoding.PEM
DEFAULT_PORT = 2376

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
    if not is_host(h):
        raise UsageError(f"{host[:100]!r}: {h[:100]!r} is neither a host name nor an IP address")
    return h, port




def _port(text: str, host: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise UsageError(f"{host!r}: {text!r} is not a port number")
    return int(text)


@dataclass(frozen=True)
class StorePolicy:
    """How long the certificates a store's CA issues live (DIR/policy.json; every key optional).

    Short by default: dockerd checks no CRL, so a certificate's end is the only revocation a
    paired daemon knows. The client's own certificate is renewed by the store itself
    (`renew_client`, the renewal timer); a daemon's needs the daemon host to pair again,
    so it lives longer (docs/pairing.md, "Lifetimes").
    """

    server_days: float = 365.0
    client_days: float = 30.0

    @classmethod
    def load(cls, path: Path) -> "StorePolicy":
        try:
            doc = read_json(path)
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as e:
            raise UsageError(f"{path}: not a store policy (JSON like {{\"server_days\": 365, \"client_days\": 30}}): "
                             f"{e}") from None
        known = {"server_days", "client_days"}
        if not isinstance(doc, dict) or set(doc) - known:
            raise UsageError(f"{path}: a store policy holds only {', '.join(sorted(known))}")
        values = {}
        for name, value in doc.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 825:
                raise UsageError(f"{path}: {name} must be a number of days above 0 and at most 825")
            values[name] = float(value)
        return cls(**values)


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

    @property
    def policy(self) -> StorePolicy:
        return StorePolicy.load(self.root / "policy.json")

    def server_dir(self, host: str, port: int) -> Path:
        name = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return self.root / "servers" / name

    def is_enrolled(self, host: str, port: int) -> bool:
        return (self.server_dir(host, port) / "server.crt").is_file()

    def pinned(self, host: str, port: int) -> str | None:
        """The fingerprint recorded when this host was enrolled, if any."""
        path = self.server_dir(host, port) / "pinned-key.sha256"
        try:
            return normalize_fingerprint(path.read_text().split()[0])
        except (OSError, IndexError):
            return None

    def check(self) -> "CertificateStore":
        """Before anything is made: the store is a directory, or can become one (not a file, a
        missing parent, a read-only disk), and its policy.json, if any, is one."""
        if self.root.exists() and not self.root.is_dir():
            raise UsageError(f"{self.root}: exists and is not a directory; --store names the store's directory")
        if not self.root.exists() and not self.root.parent.is_dir():
            raise UsageError(f"{self.root}: directory {self.root.parent} does not exist")
        check_directory(self.root)
        StorePolicy.load(self.root / "policy.json")
        return self

    def ca(self) -> FileCA:
        """The store's CA, created on first use."""
        if not (self.ca_dir / "ca.crt").exists():
            self.check()
            self.root.mkdir(mode=0o700, exist_ok=True)
            return FileCA.init(self.ca_dir, f"tpmtls pairing CA ({socket.gethostname()})")
        return FileCA.open(self.ca_dir)

    def ensure_client(self, tcti: str | None = None) -> tuple[Path, Path]:
        """(client.crt, client.key): the key created in the TPM and certified by the store's CA once.

        A new store appears whole (CA, client key and certificate staged beside it, then
        renamed), so a failure (no TPM, a full disk) leaves no store behind."""
        if self.client_cert.is_file() and self.client_key.is_file() and (self.ca_dir / "ca.crt").is_file():
            return self.client_cert, self.client_key
        from ..tpm import connect

        self.check()
        new = not self.root.exists() or not any(self.root.iterdir())
        stage = Path(tempfile.mkdtemp(prefix=f".{self.root.name}.", dir=self.root.parent if new else self.root))
        try:
            staged = CertificateStore(stage)
            ca = staged.ca() if new else self.ca()
            key = connect(tcti).create_key("ecc-p256", stage / "client.key")
            csr = build_csr(key, f"CN=tpmtls-enroll@{socket.gethostname()}")
            write_atomic(stage / "client.crt", ca.issue(csr, days=self.policy.client_days).public_bytes(PEM), 0o644)
            if new:
                stage.chmod(0o700)
                if self.root.exists():
                    self.root.rmdir()  # empty: the staged store takes its place
                os.rename(stage, self.root)
            else:
                os.replace(stage / "client.key", self.client_key)
                os.replace(stage / "client.crt", self.client_cert)
                shutil.rmtree(stage, ignore_errors=True)
        except OSError as e:
            shutil.rmtree(stage, ignore_errors=True)
            raise UsageError(f"{self.root}: cannot write the store: {e.strerror or e}") from None
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        return self.client_cert, self.client_key

    def renew_client(self) -> x509.Certificate:
        """A new certificate for the same TPM key (the store's CA signs; no TPM, no network), written to
        client.crt and every enrolled server's cert.pem, each file replaced atomically."""
        try:
            current = x509.load_pem_x509_certificate(self.client_cert.read_bytes())
        except (OSError, ValueError) as e:
            raise UsageError(f"{self.client_cert}: no client certificate to renew ({e}); pair once first") from None
        ca = self.ca()
        cert = ca.issue_for(current.public_key(), current.subject, lifetime=datetime.timedelta(days=self.policy.client_days))
        ca.record(cert)
        pem = cert.public_bytes(PEM)
        write_atomic(self.client_cert, pem, 0o644)
        for server in sorted((self.root / "servers").glob("*/cert.pem")):
            write_atomic(server, pem, 0o644)
        return cert

    def issue_server(self, public_key: object, host: str) -> x509.Certificate:
        """A serverAuth certificate from the store's CA for the daemon's key, naming `host`, living as
        long as the store's policy says."""
        ca = self.ca()
        cert = ca.issue_for(public_key, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]), server=True,
                            sans=[san_for(host)], lifetime=datetime.timedelta(days=self.policy.server_days))
        ca.record(cert)
        return cert

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
                shutil.rmtree(final)  # a pin an older tpmtls recorded before its enrollment had succeeded
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final


def as_store(store: StoreLike) -> CertificateStore:
    return store if isinstance(store, CertificateStore) else CertificateStore(store)


__all__ = ["CertificateStore", "DEFAULT_PORT", "key_fingerprint", "normalize_fingerprint", "split_host"]
