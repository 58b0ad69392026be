"""TLS contexts whose private key is a TPM key: stdlib ssl, pyOpenSSL and requests.

Both OpenSSLs decode key files through the shim provider, so a context is made the
ordinary way (`load_cert_chain`, `use_privatekey_file`) with the key *file*; the
handshake's one private-key operation then runs in the TPM through the pool.
Verification is always on; there is no switch to turn it off.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from . import provider
from .errors import KeyFileError, TlsSetupError, TpmtlsError, UsageError
from .tpm.keys import TpmKey
from .tpm.pool import Pool

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


@contextmanager
def _key_file(key: Any) -> Iterator[str]:
    """A path OpenSSL can read for any key reference (a handle or key object gets a temp file).

    The temp file holds only what a key file holds (a TPM-wrapped blob or a handle):
    never private key material.
    """
    data: bytes
    if isinstance(key, TpmKey):
        data = key.to_pem()
    elif isinstance(key, str) and key.startswith("handle:"):
        from .tpm.keyfile import handle_pem, parse_handle

        data = handle_pem(parse_handle(key))
    else:
        path = Path(key)
        if not path.is_file():
            raise KeyFileError(f"{path}: no such key file")
        yield str(path)
        return
    with tempfile.TemporaryDirectory(prefix="tpmtls-key-") as tmp:
        path = Path(tmp) / "key.pem"
        path.write_bytes(data)
        yield str(path)


def _bytes(password: bytes | str | None) -> bytes | None:
    return password.encode() if isinstance(password, str) else password


def _source(key: Any) -> str:
    return key.reference if isinstance(key, TpmKey) else str(key)


def _explain(e: Exception, cert: Any, key: Any, tcti: str | None, password: bytes | None) -> TlsSetupError:
    """One line for a failed load: the TPM's reason if there was one, else find out.

    Python's load_cert_chain reports any failure as OSError when errno happens to be
    set, so the exception says little; the certificate and key are checked here.
    """
    reason = provider.last_error()
    if reason:
        return TlsSetupError(reason)
    from cryptography import x509

    from .tpm import connect

    try:
        public = x509.load_pem_x509_certificate(Path(cert).read_bytes()).public_key()
    except (OSError, ValueError) as err:
        return TlsSetupError(f"{cert}: not a readable PEM certificate ({err})")
    try:
        tpm_key: Any = key if isinstance(key, TpmKey) else connect(tcti).load_key(key, password)
    except TpmtlsError as err:
        return TlsSetupError(str(err))
    if tpm_key.public_key() != public:
        return TlsSetupError(f"{cert}: this certificate does not belong to the key {_source(key)}")
    return TlsSetupError(f"loading {cert} with key {_source(key)} failed: {e}")


def ssl_context(
    cert: str | os.PathLike[str] | None = None,
    key: Any = None,
    cafile: str | os.PathLike[str] | None = None,
    server: bool = False,
    *,
    password: bytes | str | None = None,
    tcti: str | None = None,
    tls_version: str | None = None,
    pool: Pool | None = None,
) -> ssl.SSLContext:
    """A stdlib `ssl.SSLContext` with a TPM key (client or server role).

    Client: verifies the server against `cafile` (system CAs if None) with hostname
    checks. Server: with `cafile`, requires and verifies client certificates (mTLS).
    `tls_version` '1.2' or '1.3' pins the protocol; default: TLS 1.2 or newer.
    `pool`: sign through this pool instead of the process-wide one for the TCTI.
    """
    provider.load_into_system_ssl()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls_version is not None:
        if tls_version not in _VERSIONS:
            raise UsageError(f"TLS version {tls_version!r}: use 1.2 or 1.3")
        ctx.minimum_version = ctx.maximum_version = _VERSIONS[tls_version]
    if cafile is not None:
        try:
            ctx.load_verify_locations(cafile=str(cafile))
        except (OSError, ssl.SSLError) as e:
            raise TlsSetupError(f"{cafile}: cannot load CA certificates: {e}") from None
        if server:
            ctx.verify_mode = ssl.CERT_REQUIRED
    elif not server:
        ctx.load_default_certs()
    if cert is not None:
        if key is None:
            raise UsageError(f"{cert}: a certificate needs its key (key=...)")
        with _key_file(key) as key_path, provider.loading(_source(key), tcti, _bytes(password), pool):
            if not Path(cert).is_file():
                raise TlsSetupError(f"{cert}: no such certificate file")
            try:
                ctx.load_cert_chain(str(cert), key_path)
            except (ssl.SSLError, OSError) as e:
                raise _explain(e, cert, key, tcti, _bytes(password)) from None
    return ctx


def pyopenssl_context(
    cert: str | os.PathLike[str] | None = None,
    key: Any = None,
    cafile: str | os.PathLike[str] | None = None,
    server: bool = False,
    *,
    hostname: str | None = None,
    password: bytes | str | None = None,
    tcti: str | None = None,
    tls_version: str | None = None,
    pool: Pool | None = None,
) -> Any:
    """An `OpenSSL.SSL.Context` (pyOpenSSL) with a TPM key.

    A client context verifies the server certificate against `cafile` and its name
    against `hostname` (required: pyOpenSSL does no hostname check of its own). A
    server context with `cafile` requires client certificates. Needs `import tpmtls`
    before cryptography is imported (see `tpmtls doctor`).
    """
    provider.require_cryptography()
    from OpenSSL import SSL
    from OpenSSL._util import lib as _lib

    if not server and not hostname:
        raise UsageError("a pyOpenSSL client context needs hostname= so the server's name is verified")
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD if server else SSL.TLS_CLIENT_METHOD)
    versions = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    if tls_version is not None:
        if tls_version not in versions:
            raise UsageError(f"TLS version {tls_version!r}: use 1.2 or 1.3")
        ctx.set_min_proto_version(versions[tls_version])
        ctx.set_max_proto_version(versions[tls_version])
    try:
        if cafile is not None:
            ctx.load_verify_locations(str(cafile))
        elif not server:
            ctx.set_default_verify_paths()
    except SSL.Error as e:
        raise TlsSetupError(f"{cafile}: cannot load CA certificates: {e}") from None
    mode = SSL.VERIFY_PEER
    if server and cafile is not None:
        mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
    if not server or cafile is not None:
        ctx.set_verify(mode)
    if hostname and not server:
        param = _lib.SSL_CTX_get0_param(ctx._context)
        if _lib.X509_VERIFY_PARAM_set1_host(param, hostname.encode(), 0) != 1:
            raise UsageError(f"hostname {hostname!r} cannot be verified")
    if cert is not None:
        if key is None:
            raise UsageError(f"{cert}: a certificate needs its key (key=...)")
        with _key_file(key) as key_path, provider.loading(_source(key), tcti, _bytes(password), pool):
            try:
                ctx.use_certificate_chain_file(str(cert))
            except SSL.Error as e:
                raise TlsSetupError(f"{cert}: cannot load certificate chain: {e}") from None
            try:
                ctx.use_privatekey_file(key_path)
                ctx.check_privatekey()
            except SSL.Error as e:
                raise _explain(e, cert, key, tcti, _bytes(password)) from None
    return ctx


def requests_session(
    cert: str | os.PathLike[str] | None = None,
    key: Any = None,
    cafile: str | os.PathLike[str] | None = None,
    *,
    password: bytes | str | None = None,
    tcti: str | None = None,
) -> Any:
    """A `requests.Session` that presents the TPM-backed client certificate on HTTPS."""
    import requests
    from requests.adapters import HTTPAdapter

    context = ssl_context(cert, key, cafile, password=password, tcti=tcti)

    class _TpmAdapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            kwargs["ssl_context"] = context
            super().init_poolmanager(*args, **kwargs)

        def proxy_manager_for(self, *args: Any, **kwargs: Any) -> Any:
            kwargs["ssl_context"] = context
            return super().proxy_manager_for(*args, **kwargs)

    session = requests.Session()
    session.mount("https://", _TpmAdapter())
    # requests would otherwise add certifi's public CAs to our context for every request
    session.verify = str(cafile) if cafile is not None else True
    return session


_injected = False


def inject_into_ssl(tcti: str | None = None) -> None:
    """Let plain `ssl.SSLContext.load_cert_chain(cert, "client.key")` take TPM key files.

    Loads the shim into the system OpenSSL, so requests, urllib3, http.client and
    docker-py need no adapter. `tcti` sets $TPMTLS_TCTI if given. Undo with
    `extract_from_ssl()`.
    """
    global _injected
    if tcti:
        os.environ["TPMTLS_TCTI"] = tcti
    provider.load_into_system_ssl()
    _injected = True


def extract_from_ssl() -> None:
    """Undo `inject_into_ssl()`: TPM key files are no longer decodable by stdlib ssl."""
    global _injected
    if _injected:
        provider.unload_from_system_ssl()
        _injected = False


__all__ = [
    "extract_from_ssl",
    "inject_into_ssl",
    "pyopenssl_context",
    "requests_session",
    "ssl_context",
]
