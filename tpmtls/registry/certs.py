"""A registry connection set up from Docker's certs.d: its CAs and client certificate.

Where those files are and Docker's rules for them live in `tpmtls.docker.files`; here
they become an SSL context and a registry client, the way `docker push/pull` would.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from ..docker.files import CertDir, lookup, read_cert_dir
from ..errors import RegistryError

if TYPE_CHECKING:
    from .client import RegistryClient
    from .credentials import Credentials


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
    from .client import RegistryClient
    from .credentials import find_credentials

    credentials = credentials or find_credentials(registry)  # config errors before any TLS set-up
    if cert_dir:
        certs = read_cert_dir(Path(cert_dir))
    else:
        certs = lookup(registry, Path(certs_root) if certs_root else None)
    client = certs.client
    return RegistryClient(registry, ssl_context_for(certs, tcti), resolve=resolve, connections=max(1, jobs),
                          credentials=credentials, client_cert=str(client[0]) if client else None)
