"""A registry connection set up from Docker's certs.d: its CAs and client certificate.

Where those files are and Docker's rules for them live in `tpmtls.docker.files`; here
they become an SSL context and a registry client, the way `docker push/pull` would.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..docker.files import CertDir, docker_root, lookup, read_cert_dir, tpmtls_root
from ..errors import RegistryError

if TYPE_CHECKING:
    from .client import RegistryClient
    from .credentials import Credentials

#: Gives the password of a client key file (None: it needs none), asked only once the key is known.
KeyPassword = Callable[[Path], "bytes | None"]


def ssl_context_for(certs: CertDir, tcti: str | None = None, key_password: KeyPassword | None = None) -> ssl.SSLContext:
    """System roots + the directory's CAs; its client certificate (TPM or software key), the
    key's password from `key_password` when it has one."""
    from ..tls import ssl_context

    client = certs.client
    password = key_password(client[1]) if client and key_password else None
    ctx = ssl_context(client[0] if client else None, client[1] if client else None, None, tcti=tcti,
                      password=password)
    for ca in certs.cas:
        try:
            ctx.load_verify_locations(cafile=str(ca))
        except (ssl.SSLError, OSError) as e:
            raise RegistryError(f"{ca}: not a PEM CA certificate ({e})") from None
    return ctx


def searched(hostport: str, cert_dir: "str | os.PathLike[str] | None" = None,
             certs_root: "str | os.PathLike[str] | None" = None) -> str:
    """Where the certificates for `hostport` were looked for, as a user would write it."""
    if cert_dir:
        return str(cert_dir)
    return f"{tpmtls_root(certs_root) / hostport}/ or {docker_root() / hostport}/"


def trust_hint(certs: CertDir, where: str) -> str:
    """What to check when the registry's certificate is not trusted: the CAs that were tried."""
    if certs.cas:
        return f"none of {', '.join(str(ca) for ca in certs.cas)} issued it (nor a system CA)"
    return f"no CA (*.crt) in {where}, only the system's were tried: put the registry's CA there as ca.crt"


def check_own_certificate(cert: "str | os.PathLike[str] | None", registry: str) -> None:
    """Our client certificate in date, or one line saying when it ended and how to renew it."""
    from ..tls.diagnosis import own_certificate_problem

    problem = own_certificate_problem(cert)
    if problem is not None:
        raise RegistryError(f"{registry}: our client certificate {problem}")


def registry_client(registry: str, *, cert_dir: "str | os.PathLike[str] | None" = None,
                    certs_root: "str | os.PathLike[str] | None" = None, resolve: dict[str, str] | None = None,
                    jobs: int = 4, credentials: "Credentials | None" = None, tcti: str | None = None,
                    key_password: KeyPassword | None = None) -> "RegistryClient":
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
    check_own_certificate(client[0] if client else None, registry)  # before a peer is blamed for it
    where = searched(registry, cert_dir, certs_root)
    return RegistryClient(registry, ssl_context_for(certs, tcti, key_password), resolve=resolve, connections=max(1, jobs),
                          credentials=credentials, client_cert=str(client[0]) if client else None,
                          certs_where=where, trust=trust_hint(certs, where))
