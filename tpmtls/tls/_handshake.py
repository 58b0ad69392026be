"""Stdlib sockets and SSL objects whose handshake errors name the TPM's reason.

A handshake that fails because the TPM could not sign surfaces from OpenSSL as
"EVP lib"; the shim's sign callback recorded why on the handshake's thread
(`provider.last_error()`). These classes clear that record as a handshake starts and
re-raise such a failure as a `TpmHandshakeError` (an `ssl.SSLError` and a tpmtls
`HandshakeError`). `TpmSSLContext` makes them; `inject_into_ssl` installs them on
`ssl.SSLContext` for as long as it is injected.
"""

from __future__ import annotations

import ssl
from contextlib import contextmanager
from typing import Iterator

from .. import provider
from ._errors import TpmHandshakeError, clear_tpm_error


@contextmanager
def _tpm_reason() -> Iterator[None]:
    """Re-raise a handshake error caused by a failed TPM signature with the TPM's reason."""
    clear_tpm_error()
    try:
        yield
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError, TpmHandshakeError):
        raise
    except ssl.SSLError as e:
        reason = provider.last_error()  # the sign callback ran on this thread, in this handshake
        if not reason:
            raise
        err = TpmHandshakeError(f"TLS handshake failed: {reason}", e.library, e.reason)
        err.ssl_error = e  # type: ignore[attr-defined]
        raise err from None


class TpmSSLSocket(ssl.SSLSocket):
    """An `ssl.SSLSocket` whose handshake errors name the TPM's reason."""

    def do_handshake(self, block: bool = False) -> None:
        with _tpm_reason():
            super().do_handshake(block)


class TpmSSLObject(ssl.SSLObject):
    """An `ssl.SSLObject` (asyncio, TLS in TLS) whose handshake errors name the TPM's reason."""

    def do_handshake(self) -> None:
        with _tpm_reason():
            super().do_handshake()


class TpmSSLContext(ssl.SSLContext):
    """What `ssl_context()` returns: an `ssl.SSLContext` making TPM-aware sockets."""

    sslsocket_class = TpmSSLSocket
    sslobject_class = TpmSSLObject
