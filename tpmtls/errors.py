"""One exception hierarchy for tpmtls: library users catch by type, the CLI prints one line."""

from __future__ import annotations


class TpmtlsError(Exception):
    """Root of every error tpmtls raises on purpose; its message is one line meant for a human."""


class TpmUnavailable(TpmtlsError):
    """The TPM (or its resource manager) cannot be reached over the configured TCTI."""


class TpmBusy(TpmtlsError):
    """Every pooled TPM context stayed busy for longer than the pool's wait limit."""


class TpmError(TpmtlsError):
    """The TPM answered with an error; the message keeps its response code."""

    def __init__(self, message: str, rc: int | None = None) -> None:
        super().__init__(message)
        self.rc = rc


class TpmLockout(TpmError):
    """The TPM is in dictionary-attack lockout and refuses DA-protected keys for a while."""


class KeyAuthError(TpmError):
    """A key's password is missing or wrong."""


class KeyFileError(TpmtlsError):
    """A key file or key reference cannot be used: unreadable, malformed, or made for another TPM."""


class KeyNotExportable(TpmtlsError, TypeError):
    """Someone asked for private key material, which by design never leaves the TPM."""


class ProviderError(TpmtlsError):
    """The OpenSSL shim provider cannot serve this process (not built, or loaded too late)."""


class TlsSetupError(TpmtlsError):
    """A TLS context cannot be set up: certificate, key or CA file unusable or mismatched."""


class RegistryError(TpmtlsError):
    """A registry refused, failed or answered something we cannot use."""


class ImageError(TpmtlsError):
    """An image source (daemon image, archive, OCI layout) cannot be read."""


class HandshakeError(TpmtlsError):
    """A TLS connection failed: peer unreachable, not trusted, or refusing our certificate."""


class UsageError(TpmtlsError):
    """Bad arguments that argparse cannot catch (file exists, bad handle, bad subject …)."""


class DaemonError(TpmtlsError):
    """The Docker daemon cannot be reached or did not answer as a Docker daemon."""


class EnrollmentError(TpmtlsError):
    """An enrollment was refused, or the peer is not the enrollment service we expect."""
