"""`ssl_context()`: a stdlib `ssl.SSLContext` whose private key is a TPM key.

The context is a `TpmSSLContext`: its sockets and SSL objects (what http.client,
requests/urllib3 and asyncio get from `wrap_socket`/`wrap_bio`) turn a handshake that
failed because the TPM could not sign into a `TpmHandshakeError` naming the TPM's
reason, instead of OpenSSL's "EVP lib" (see `_handshake`).
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from ..errors import TlsSetupError, UsageError
from ..provider import loading
from ..tpm.pool import Pool
from ._handshake import TpmSSLContext
from ._inject import plain_load_cert_chain, system_provider
from ._keyref import KeyRef, as_bytes, explain, key_file, source
from ._resume import SessionCache

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def ssl_context(
    cert: str | os.PathLike[str] | None = None,
    key: KeyRef | None = None,
    cafile: str | os.PathLike[str] | None = None,
    server: bool = False,
    *,
    password: bytes | str | None = None,
    tcti: str | None = None,
    tls_version: str | None = None,
    pool: Pool | None = None,
    resume: bool = True,
) -> TpmSSLContext:
    """A stdlib `ssl.SSLContext` with a TPM key (client or server role).

    Client: verifies the server against `cafile` (system CAs if None) with hostname
    checks. Server: with `cafile`, requires and verifies client certificates (mTLS).
    `tls_version` '1.2' or '1.3' pins the protocol; default: TLS 1.2 or newer.
    `pool`: sign through this pool instead of the process-wide one for the TCTI.
    Handshakes that fail because the TPM could not sign raise `TpmHandshakeError`.
    A client context resumes TLS sessions per server (one TPM signature per server and
    session lifetime, not per connection); `resume=False` turns that off, and
    `ctx.sessions.stats()` counts full and resumed handshakes and TPM signatures.
    """
    with system_provider():  # before the SSL_CTX exists: it takes its signature algorithms from the providers then
        ctx = _make(cert, key, cafile, server, password, tcti, tls_version, pool)
    ctx.sessions = SessionCache() if resume and not server else None
    return ctx


def _make(cert: str | os.PathLike[str] | None, key: KeyRef | None, cafile: str | os.PathLike[str] | None,
          server: bool, password: bytes | str | None, tcti: str | None, tls_version: str | None,
          pool: Pool | None) -> TpmSSLContext:
    ctx = TpmSSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls_version is not None:
        if tls_version not in _VERSIONS:
            raise UsageError(f"TLS version {tls_version!r}: use 1.2 or 1.3")
        ctx.minimum_version = ctx.maximum_version = _VERSIONS[tls_version]
    if cafile is not None:
        try:
            ctx.load_verify_locations(cafile=os.fspath(cafile))
        except (OSError, ssl.SSLError) as e:
            raise TlsSetupError(f"{cafile}: cannot load CA certificates: {e}") from None
        if server:
            ctx.verify_mode = ssl.CERT_REQUIRED
    elif not server:
        ctx.load_default_certs()
    if cert is not None:
        if key is None:
            raise UsageError(f"{cert}: a certificate needs its key (key=...)")
        with key_file(key) as key_path, loading(source(key), tcti, as_bytes(password), pool):
            if not Path(cert).is_file():
                raise TlsSetupError(f"{cert}: no such certificate file")
            try:
                # A TPM key gets its password through provider.loading, a software key
                # from OpenSSL; never let OpenSSL prompt on the terminal for one.
                plain_load_cert_chain(ctx, os.fspath(cert), key_path, as_bytes(password) or _no_prompt)
            except (ssl.SSLError, OSError) as e:
                raise explain(e, cert, key, tcti, as_bytes(password)) from None
    return ctx


def _no_prompt() -> bytes:
    """OpenSSL's passphrase callback for keys a factory loads: an empty answer, never a prompt."""
    return b""
