"""`tpmtls.docker_client()`: a docker-py `DockerClient` whose TLS client key is a TPM key.

It reads DOCKER_HOST, DOCKER_TLS_VERIFY and DOCKER_CERT_PATH (default ~/.docker, with
Docker's ca.pem / cert.pem / key.pem) the way `docker.from_env()` does, with two
differences on purpose: the daemon is verified against ca.pem and nothing else (docker-py
lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE replace it: docs/facts-openssl.md, "requests,
docker-py and CA bundles from the environment"), and verification is
never off: TLS without DOCKER_TLS_VERIFY still verifies, and a tcp:// daemon is only
spoken to in the clear on loopback (a daemon-proxy socket).
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from typing import Any

import docker
import requests
from docker.constants import DEFAULT_MAX_POOL_SIZE, DEFAULT_NUM_POOLS, DEFAULT_TIMEOUT_SECONDS
from requests.adapters import HTTPAdapter

from ..errors import HandshakeError, TpmtlsError, UsageError
from ..tls.diagnosis import Cause, causes, diagnose
from . import DaemonError
from .config import parse_host
from .files import CertPath, default_cert_path

DEFAULT_HOST = "unix:///var/run/docker.sock"


class TpmDaemonAdapter(HTTPAdapter):
    """requests adapter whose TLS settings come from one `ssl.SSLContext` and nothing else.

    requests merges REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE (or certifi) into `verify` for
    every request and urllib3 then loads that bundle into the context; here `verify` and
    `cert` are ignored, so trust is exactly the context's CA and the key is its TPM key.
    """

    def __init__(self, context: ssl.SSLContext, pool_connections: int = DEFAULT_NUM_POOLS,
                 pool_maxsize: int = DEFAULT_MAX_POOL_SIZE) -> None:
        self._tls_context = context
        super().__init__(pool_connections=pool_connections, pool_maxsize=pool_maxsize)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        pool_kwargs["ssl_context"] = self._tls_context
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        proxy_kwargs["ssl_context"] = self._tls_context
        return super().proxy_manager_for(proxy, **proxy_kwargs)

    def get_connection_with_tls_context(self, request: Any, verify: Any, proxies: Any = None,
                                        cert: Any = None) -> Any:
        return super().get_connection_with_tls_context(request, True, proxies, None)

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        # Never let urllib3 load a CA file into our context (see class docstring).
        conn.cert_reqs = "CERT_REQUIRED"
        conn.ca_certs = None
        conn.ca_cert_dir = None

    def __getstate__(self) -> dict[str, Any]:  # requests pickles adapters; a context cannot be
        raise TypeError("a TPM-backed adapter cannot be pickled")


class _TpmApiClient(docker.APIClient):
    """docker-py's low-level client, with `TpmDaemonAdapter` mounted for https://."""

    def __init__(self, base_url: str, context: ssl.SSLContext, version: str | None, timeout: int) -> None:
        # A fixed version first: APIClient would otherwise ask the daemon before our adapter is mounted.
        super().__init__(base_url=base_url, version="1.24", timeout=timeout, tls=True)
        self._custom_adapter = TpmDaemonAdapter(context)
        self.mount("https://", self._custom_adapter)
        self._version = version or "1.24"


class _DockerClient(docker.DockerClient):
    def __init__(self, api: docker.APIClient) -> None:  # noqa: D107 - DockerClient only holds `api`
        self.api = api


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _env_tls_verify() -> bool:
    # docker-py's rule: set and non-empty counts as true.
    value = os.environ.get("DOCKER_TLS_VERIFY")
    return value is not None and value != ""


def explain_tls_failure(err: BaseException, where: str, cert_path: CertPath) -> TpmtlsError:
    """One line for a failed TLS exchange with a daemon (or NGINX in front of one); the cause
    is tls/diagnosis.py's, the words are the daemon side's."""
    found = diagnose(err, ours=cert_path.cert)
    if found.cause is Cause.NAME_MISMATCH:
        return HandshakeError(f"{where}: the daemon's certificate does not name this host ({found.reason})")
    if found.cause is Cause.UNTRUSTED:
        return HandshakeError(f"{where}: the daemon's certificate is not signed by {cert_path.ca} ({found.reason})")
    if found.cause is Cause.EXPIRED and not found.ours:
        return HandshakeError(f"{where}: the daemon's certificate is out of its dates ({found.reason})")
    if found.cause is Cause.NOT_TLS:
        return HandshakeError(f"{where}: does not speak TLS (a plain-TCP daemon port?); "
                              "point DOCKER_HOST at the daemon's --tlsverify port")
    if found.cause is Cause.EXPIRED:
        return HandshakeError(f"{where}: refused our client certificate {cert_path.cert} "
                              f"({found.dates or 'as expired or not yet valid'})")
    if found.cause is Cause.REFUSED:
        return HandshakeError(f"{where}: refused our client certificate {cert_path.cert} "
                              "(is it issued by a CA the daemon trusts, and not expired?)")
    if found.cause is Cause.CLOSED:
        # Go's TLS 1.3 server (dockerd) drops the connection after a handshake whose client
        # certificate it does not accept: an EOF right there means exactly that.
        return HandshakeError(f"{where}: refused our client certificate {cert_path.cert} (closed the connection "
                              "during TLS set-up: is it issued by a CA the daemon trusts, and not expired?)")
    return HandshakeError(f"{where}: TLS failed: {found.reason}")


def _explain(err: BaseException, where: str, cert_path: CertPath | None) -> TpmtlsError:
    found = diagnose(err)
    if cert_path is not None and (any(isinstance(x, (ssl.SSLError, requests.exceptions.SSLError)) for x in causes(err))
                                  or found.cause is Cause.CLOSED):
        return explain_tls_failure(err, where, cert_path)
    if found.cause is Cause.UNREACHABLE:
        if "resolution" in found.reason or "not known" in found.reason:
            return DaemonError(f"{where}: cannot resolve the host name")
        return DaemonError(f"{where}: cannot connect (connection refused): is dockerd (or the proxy) running there?")
    if found.cause is Cause.TIMEOUT:
        return DaemonError(f"{where}: no answer in time: is the host reachable and the port right?")
    return DaemonError(f"{where}: {found.reason}")


def docker_client(
    base_url: str | None = None,
    *,
    cert_path: str | os.PathLike[str] | None = None,
    tls_verify: bool | None = None,
    version: str | None = None,
    timeout: int | None = None,
    tcti: str | None = None,
    password: bytes | str | None = None,
) -> docker.DockerClient:
    """A `docker.DockerClient` for DOCKER_HOST whose TLS client key is the TPM key in DOCKER_CERT_PATH.

    Arguments override DOCKER_HOST / DOCKER_TLS_VERIFY / DOCKER_CERT_PATH; TLS is on
    when a cert path or tls_verify is given (as `docker.from_env()` decides) and the
    daemon is always verified against the directory's ca.pem. `version` None or "auto"
    asks the daemon (so a wrong host, CA or key fails here, as one clear error).
    """
    host = base_url or os.environ.get("DOCKER_HOST") or DEFAULT_HOST
    if host.startswith("https://"):
        host = "tcp://" + host[len("https://"):]
    kind, name, port = parse_host(host)
    timeout = DEFAULT_TIMEOUT_SECONDS if timeout is None else timeout
    if kind == "unix":
        # The socket's file permissions are its authentication; TLS does not apply (docker-py alike).
        return _checked(docker.DockerClient(base_url=host, version=version or "1.24", timeout=timeout),
                        host, version, None)
    env_cert_path = os.environ.get("DOCKER_CERT_PATH") or None
    use_tls = bool(tls_verify) or (tls_verify is None and (_env_tls_verify() or bool(env_cert_path))) \
        or cert_path is not None
    if not use_tls:
        if not _is_loopback(name):
            raise UsageError(f"{host}: a tcp:// daemon without TLS; set DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH "
                             "(see 'tpmtls certs env'): tpmtls never talks to a remote daemon in the clear")
        return _checked(docker.DockerClient(base_url=host, version=version or "1.24", timeout=timeout),
                        host, version, None)
    from ..tls import ssl_context

    paths = default_cert_path(cert_path).check_files()
    context = ssl_context(paths.cert, str(paths.key), paths.ca, password=password, tcti=tcti)
    api = _TpmApiClient(f"tcp://{name}:{port}", context, version, timeout)
    return _checked(_DockerClient(api), host, version, paths)


def _checked(client: docker.DockerClient, host: str, version: str | None,
             cert_path: CertPath | None) -> docker.DockerClient:
    """Ask the daemon for its API version unless one was given; one clear error if it cannot answer."""
    if version is not None and version != "auto":
        return client
    try:
        client.api._version = client.api.version(api_version=False)["ApiVersion"]
    except (requests.exceptions.RequestException, docker.errors.DockerException, OSError, KeyError) as e:
        client.close()
        if isinstance(e, docker.errors.APIError) and e.response is not None and e.response.status_code == 400 \
                and cert_path is not None:
            raise explain_tls_failure(Exception(str(e)), host, cert_path) from None
        raise _explain(e, host, cert_path) from None
    return client


__all__ = ["DaemonError", "TpmDaemonAdapter", "docker_client", "explain_tls_failure"]
