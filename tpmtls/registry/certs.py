"""Docker's certs.d rules: which CAs and client certificate a registry connection uses.

`/etc/docker/certs.d/<host[:port]>/`: every `*.crt` is a CA (added to the system roots,
as Docker does), every `X.cert` needs its `X.key` and vice versa. A `X.key` whose PEM
label is `TSS2 PRIVATE KEY` (or the handle form) lives in the TPM (DESIGN §7).
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import RegistryError

if TYPE_CHECKING:
    from .auth import Credentials
    from .client import RegistryClient

DEFAULT_ROOT = Path("/etc/docker/certs.d")


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
        head = self.client[1].read_bytes()[:64]
        return b"TSS2 PRIVATE KEY" in head or b"TPMTLS KEY HANDLE" in head


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
    """A client for `registry` set up the way `docker push/pull` would: certs.d (or
    `cert_dir`), credentials from the docker config unless given, `--resolve`."""
    from .auth import find_credentials
    from .client import RegistryClient

    credentials = credentials or find_credentials(registry)  # config errors before any TLS set-up
    root = Path(certs_root or os.environ.get("TPMTLS_CERTS_D") or DEFAULT_ROOT)
    certs = read_cert_dir(Path(cert_dir) if cert_dir else cert_dir_for(registry, root))
    return RegistryClient(registry, ssl_context_for(certs, tcti), resolve=resolve, connections=max(1, jobs),
                          credentials=credentials)
