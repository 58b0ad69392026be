"""What a TLS Docker daemon and its clients read: `daemon.json`'s TLS block, the systemd
drop-in it needs, and the `DOCKER_CERT_PATH` layout (ca.pem, cert.pem, key.pem).

Everything is checked before anything is written, so a daemon is never configured with
a certificate it would refuse to serve (wrong key, wrong CA, client-only, missing name).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from ..errors import TlsSetupError, UsageError

DEFAULT_TCP_HOST = "tcp://0.0.0.0:2376"
DEFAULT_SOCKET = "/var/run/docker.sock"
#: Docker's names in DOCKER_CERT_PATH (docker CLI and docker-py alike).
CA_PEM, CERT_PEM, KEY_PEM = "ca.pem", "cert.pem", "key.pem"
_WILDCARD = {"0.0.0.0", "::", ""}


@dataclass(frozen=True)
class DaemonConfig:
    """The two files a TLS daemon needs: `daemon.json` and the systemd drop-in."""

    daemon_json: str
    dropin: str


def load_cert(path: str | os.PathLike[str], what: str = "certificate") -> x509.Certificate:
    """A PEM certificate, or a one-line error naming the file."""
    p = Path(path)
    try:
        return x509.load_pem_x509_certificate(p.read_bytes())
    except FileNotFoundError:
        raise UsageError(f"{p}: no such {what} file") from None
    except OSError as e:
        raise UsageError(f"{p}: cannot read {what}: {e.strerror}") from None
    except ValueError:
        raise UsageError(f"{p}: not a PEM {what}") from None


def is_tpm_key_file(path: str | os.PathLike[str]) -> bool:
    """True for a `TSS2 PRIVATE KEY` or tpmtls handle file (only tpmtls can use those)."""
    try:
        head = Path(path).read_bytes()[:4096]
    except OSError:
        return False
    return b"-----BEGIN TSS2 PRIVATE KEY-----" in head or b"-----BEGIN TPMTLS KEY HANDLE-----" in head


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        cert.verify_directly_issued_by(ca)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def _ekus(cert: x509.Certificate) -> set[x509.ObjectIdentifier] | None:
    try:
        return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return None


def check_chain(cert_path: str | os.PathLike[str], ca_path: str | os.PathLike[str], *, server: bool) -> x509.Certificate:
    """The certificate, after checking it is signed by the CA and made for its role."""
    cert, ca = load_cert(cert_path), load_cert(ca_path, "CA certificate")
    if not _issued_by(cert, ca):
        raise TlsSetupError(f"{cert_path}: not signed by the CA in {ca_path}; peers trusting that CA would refuse it")
    ekus = _ekus(cert)
    want = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    if ekus is not None and want not in ekus:
        role, flag = ("server", "--server --san …") if server else ("client", "--client")
        raise TlsSetupError(f"{cert_path}: not a {role} certificate (no {'serverAuth' if server else 'clientAuth'} "
                            f"usage); issue one with 'tpmtls ca issue {flag}'")
    return cert


def _names(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set(), set()
    return ({n.lower() for n in san.get_values_for_type(x509.DNSName)},
            {str(a) for a in san.get_values_for_type(x509.IPAddress)})


def parse_host(url: str) -> tuple[str, str, int | None]:
    """`tcp://HOST:PORT` → ("tcp", HOST, PORT); `unix:///path` → ("unix", "/path", None)."""
    parts = urlsplit(url)
    if parts.scheme == "unix" and parts.path.startswith("/") and not parts.netloc:
        return "unix", parts.path, None
    if parts.scheme == "tcp" and parts.hostname is not None:
        try:
            port = parts.port
        except ValueError:
            port = None
        if port and not parts.path.strip("/"):
            return "tcp", parts.hostname, port
    raise UsageError(f"{url!r}: write a Docker host as tcp://HOST:PORT or unix:///absolute/path")


def _check_server_key(cert_path: str, key_path: str, cert: x509.Certificate) -> None:
    if is_tpm_key_file(key_path):
        raise UsageError(f"{key_path}: a TPM key file; dockerd cannot use a TPM, give the daemon a file key "
                         "(the CA key and the clients' keys can stay in TPMs)")
    try:
        key = serialization.load_pem_private_key(Path(key_path).read_bytes(), None)
    except FileNotFoundError:
        raise UsageError(f"{key_path}: no such key file") from None
    except TypeError:
        raise UsageError(f"{key_path}: encrypted; dockerd cannot read a key with a passphrase") from None
    except (OSError, ValueError) as e:
        raise UsageError(f"{key_path}: not a PEM private key ({e})") from None
    if key.public_key() != cert.public_key():
        raise TlsSetupError(f"{cert_path}: this certificate does not belong to the key {key_path}")


def check_server(cert: str, key: str, ca: str) -> x509.Certificate:
    """A server certificate from the CA, with its file key: what dockerd or NGINX can serve."""
    server_cert = check_chain(cert, ca, server=True)
    _check_server_key(cert, key, server_cert)
    return server_cert


def check_names(cert_path: str, cert: x509.Certificate, name: str) -> None:
    """The certificate names `name` (a DNS name or an IP address), unless it is a wildcard bind."""
    if name in _WILDCARD:
        return
    dns, ips = _names(cert)
    try:
        ok = str(ipaddress.ip_address(name)) in ips
        kind = "IP"
    except ValueError:
        ok, kind = name.lower() in dns, "DNS"
    if not ok:
        raise TlsSetupError(f"{cert_path}: has no subjectAltName for {name}; clients would refuse the server "
                            f"(issue it with --san {kind}:{name})")


def daemon_config(cert: str, key: str, ca: str, hosts: list[str], socket: str | None = DEFAULT_SOCKET,
                  dockerd: str | None = None) -> DaemonConfig:
    """`daemon.json` with tls/tlsverify/tlscacert/tlscert/tlskey/hosts, and the systemd drop-in.

    The drop-in clears ExecStart: Debian's docker.service starts `dockerd -H fd://`, and
    dockerd refuses to start when `hosts` is both a flag and in daemon.json (docs/daemon.md,
    "A TLS-protected daemon").
    """
    server_cert = check_server(cert, key, ca)
    all_hosts = [f"unix://{socket}"] if socket else []
    for h in hosts:
        kind, name, _port = parse_host(h)
        if kind == "tcp":
            check_names(cert, server_cert, name)
        if h not in all_hosts:
            all_hosts.append(h)
    if not any(parse_host(h)[0] == "tcp" for h in all_hosts):
        raise UsageError("no tcp:// host: a TLS daemon needs at least one --host tcp://ADDRESS:PORT")
    block = {
        "tls": True,
        "tlsverify": True,
        "tlscacert": str(Path(ca).resolve()),
        "tlscert": str(Path(cert).resolve()),
        "tlskey": str(Path(key).resolve()),
        "hosts": all_hosts,
    }
    binary = dockerd or shutil.which("dockerd") or "/usr/bin/dockerd"
    dropin = ("# /etc/systemd/system/docker.service.d/docker.conf (written by tpmtls certs daemon-config)\n"
              "# docker.service passes -H fd://; with \"hosts\" in daemon.json dockerd refuses to start\n"
              "# unless ExecStart is cleared first.\n"
              "[Service]\nExecStart=\n"
              f"ExecStart={binary}\n")
    return DaemonConfig(json.dumps(block, indent=2) + "\n", dropin)


@dataclass(frozen=True)
class CertPath:
    """A DOCKER_CERT_PATH directory: ca.pem, cert.pem and key.pem (Docker's names)."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / CA_PEM

    @property
    def cert(self) -> Path:
        return self.directory / CERT_PEM

    @property
    def key(self) -> Path:
        return self.directory / KEY_PEM

    def check_files(self) -> "CertPath":
        """One line naming the first missing file and what to put there."""
        if not self.directory.is_dir():
            raise UsageError(f"{self.directory}: no such certificate directory (DOCKER_CERT_PATH); "
                             "lay it out with 'tpmtls certs env HOST:PORT --cert-path DIR --cert C --key K --ca CA'")
        for path, what in ((self.ca, "the CA certificate that signed the daemon's"),
                           (self.cert, "your client certificate"), (self.key, "your TPM key file")):
            if not path.is_file():
                raise UsageError(f"{path}: missing; DOCKER_CERT_PATH needs {path.name} ({what})")
        return self


def default_cert_path(cert_path: str | os.PathLike[str] | None = None) -> CertPath:
    """Argument > $DOCKER_CERT_PATH > ~/.docker, as the docker CLI and docker-py choose."""
    chosen = cert_path or os.environ.get("DOCKER_CERT_PATH") or os.path.join(os.path.expanduser("~"), ".docker")
    return CertPath(Path(chosen))


__all__ = ["CertPath", "DaemonConfig", "check_chain", "check_names", "check_server", "daemon_config", "default_cert_path",
           "is_tpm_key_file", "load_cert", "parse_host"]
