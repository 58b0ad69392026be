"""Errors of the stdlib TLS path that are both `ssl.SSLError` (what callers already catch)
and `TpmtlsError` (what tpmtls promises), with the TPM's reason as their text."""

from __future__ import annotations

import ssl

from ..errors import HandshakeError, TlsSetupError
from ..provider import clear_error


def clear_tpm_error() -> None:
    """Forget this thread's recorded TPM failure, so a stale one is never blamed for a handshake."""
    clear_error()


class _SSLErrorText(ssl.SSLError):
    def __init__(self, message: str, library: str | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.strerror = message  # ssl.SSLError's str() shows strerror
        self.library = library or "tpmtls"
        self.reason = reason or "TPM_FAILURE"


class KeyLoadError(TlsSetupError, _SSLErrorText):
    """`load_cert_chain` failed on a TPM key (after `inject_into_ssl`): says why, never prompts."""


class TpmHandshakeError(HandshakeError, _SSLErrorText):
    """A handshake failed because the TPM could not sign; the message names the TPM's reason."""
