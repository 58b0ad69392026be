"""Docker's certs.d rules: which CAs and client certificate a registry connection uses.

Two roots, each `<root>/<host[:port]>/` with Docker's rules (every `*.crt` is a CA added
to the system roots, every `X.cert` needs its `X.key` and vice versa): tpmtls's own
(`$TPMTLS_CERTS_D` or /etc/tpmtls/certs.d, where TPM keys live) first, then Docker's
(`$DOCKER_CERTS_D` or /etc/docker/certs.d: its CAs and software pairs). A `X.key` whose
PEM label is `TSS2 PRIVATE KEY` (or the handle form) lives in the TPM (docs/formats.md, "certs.d"); one
found in Docker's root still works, with a warning, since it breaks stock docker there.
"""

from __future__ import annotations

import os
import ssl
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import RegistryError

if TYPE_CHECKING:
    from .auth import Credentials
    from .client import RegistryClient

TPMTLS_ROOT = Path("/etc/tpmtls/certs.d")
DOCKER_ROOT = Path("/etc/docker/certs.d")
DEFAULT_ROOT = TPMTLS_ROOT


def tpmtls_root() -> Path:
    return Path(os.environ.get("TPMTLS_CERTS_D") or TPMTLS_ROOT)


def docker_root() -> Path:
    return Path(os.environ.get("DOCKER_CERTS_D") or DOCKER_ROOT)


@dataclass(frozen=True)
class CertDir:
    """What one certs.d directory holds."""

    directory: Path | None
    cas: tuple[Path, ...] = ()
    pairs: tuple[tuple[Path, Path], ...] = field(default=())  # (X.cert, X.key), sorted

    @property
    def client(self) -> tuple[Path, Path] | None:
        """The client certificate and key used (the first pair by name, like Docker's first)."""
        return self.pairs[0] if self.pairs else None

    def is_tpm_key(self) -> bool:
        if self.client is None:
            return False
        return is_tpm_key_file(self.client[1])


def is_tpm_key_file(path: Path) -> bool:
    """Does this key file hold a TPM key (the TSS2 label or tpmtls's handle form)?"""
    try:
        head = path.read_bytes()[:64]
    except OSError:
        return False
    return b"TSS2 PRIVATE KEY" in head or b"TPMTLS KEY HANDLE" in head


def lookup(hostport: str, ours: Path | None = None, docker: Path | None = None) -> CertDir:
    """tpmtls's certs.d, then Docker's: CAs of both; the client pair from ours if it has one."""
    mine = read_cert_dir(cert_dir_for(hostport, ours or tpmtls_root()))
    theirs = read_cert_dir(cert_dir_for(hostport, docker or docker_root()))
    if mine.client is None and theirs.client is not None and theirs.is_tpm_key():
        cert, key = theirs.client
        dest = (ours or tpmtls_root()) / hostport
        print(f"tpmtls: warning: {key} is a TPM key in Docker's certs.d, where it makes stock docker fail for "
              f"{hostport}; move it: mkdir -p {dest} && mv {cert} {key} {dest}/", file=sys.stderr)
    directory = mine.directory if mine.client is not None or theirs.directory is None else theirs.directory
    return CertDir(directory, mine.cas + theirs.cas, mine.pairs + theirs.pairs)


def cert_dir_for(hostport: str, root: Path = DEFAULT_ROOT) -> Path | None:
    """`root/<host:port>` (Docker's lookup); None if there is no such directory."""
    candidate = root / hostport
    return candidate if candidate.is_dir() else None


def read_cert_dir(directory: Path | None) -> CertDir:
    """Apply Docker's rules to a certs.d directory (None: no client cert, system CAs)."""
    if directory is None:
        return CertDir(None)
    if not directory.is_dir():
        raise RegistryError(f"{directory}: no such certificate directory")
    files = sorted(p for p in directory.iterdir() if p.is_file())
    cas = tuple(p for p in files if p.suffix == ".crt")
    certs = {p.stem: p for p in files if p.suffix == ".cert"}
    keys = {p.stem: p for p in files if p.suffix == ".key"}
    for stem in sorted(set(certs) - set(keys)):
        raise RegistryError(f"{certs[stem]}: client certificate without its key {stem}.key (Docker's certs.d rule)")
    for stem in sorted(set(keys) - set(certs)):
        raise RegistryError(f"{keys[stem]}: key without its client certificate {stem}.cert (Docker's certs.d rule)")
    return CertDir(directory, cas, tuple((certs[s], keys[s]) for s in sorted(certs)))


def ssl_context_for(certs: CertDir, tcti: str | None = None) -> ssl.SSLContext:
    """System roots + the directory's CAs; its client certificate (TPM or software key)."""
    from ..tls import ssl_context

    client = certs.client
    ctx = ssl_context(client[0] if client else None, client[1] if client else None, None, tcti=tcti)
    for ca in certs.cas:
        try:
            ctx.load_verify_locations(cafile=str(ca))
        except (ssl.SSLError, OSError) as e:
            raise RegistryError(f"{ca}: not a PEM CA certificate ({e})") from None
    return ctx


def registry_client(registry: str, *, cert_dir: "str | os.PathLike[str] | None" = None,
                    certs_root: "str | os.PathLike[str] | None" = None, resolve: dict[str, str] | None = None,
                    jobs: int = 4, credentials: "Credentials | None" = None, tcti: str | None = None) -> "RegistryClient":
    """A client for `registry` set up the way `docker push/pull` would: certs.d (`cert_dir`,
    or tpmtls's root — `certs_root` if given — then Docker's), credentials from the docker
    config unless given, `--resolve`."""
    from .auth import find_credentials
    from .client import RegistryClient

    credentials = credentials or find_credentials(registry)  # config errors before any TLS set-up
    if cert_dir:
        certs = read_cert_dir(Path(cert_dir))
    else:
        certs = lookup(registry, Path(certs_root) if certs_root else None)
    client = certs.client
    return RegistryClient(registry, ssl_context_for(certs, tcti), resolve=resolve, connections=max(1, jobs),
                          credentials=credentials, client_cert=str(client[0]) if client else None)
