"""tpmtls: mutual TLS for Docker clients and daemons with a private key that never leaves the TPM.

    import tpmtls
    tpm = tpmtls.connect()                    # TCTI: arg > $TPMTLS_TCTI > $TPM2TOOLS_TCTI > /dev/tpmrm0
    key = tpm.create_key("ecc-p256", path="client.key")
    key = tpm.load_key("client.key")          # a cryptography EllipticCurvePrivateKey / RSAPrivateKey
"""

from typing import TYPE_CHECKING, Any

# First, before anything imports cryptography: give its OpenSSL the TPM shim provider
# (it reads its config only once, at its first import). See tpmtls/provider.
from .provider import bootstrap as _bootstrap

_bootstrap()

from .errors import (  # noqa: E402
    KeyAuthError,
    KeyFileError,
    KeyNotExportable,
    ProviderError,
    TlsSetupError,
    TpmBusy,
    TpmError,
    TpmLockout,
    TpmtlsError,
    TpmUnavailable,
)
from .tls import extract_from_ssl, inject_into_ssl, pyopenssl_context, requests_session, ssl_context  # noqa: E402
from .tpm import Pool, Tpm, connect  # noqa: E402

__version__ = "0.1.0"

if TYPE_CHECKING:  # imported lazily at call time: the registry client is not needed to sign
    from .registry.pull import PullResult
    from .registry.push import PushResult


def push(image: str, destination: str, **options: Any) -> "PushResult":
    """Push an image to HOST[:PORT]/REPO[:TAG] over TPM-backed mTLS; see tpmtls.registry.push."""
    from .registry.push import push as _push

    return _push(image, destination, **options)


def pull(source: str, destination: str, **options: Any) -> "PullResult":
    """Pull HOST[:PORT]/REPO[:TAG|@DIGEST] to oci:/docker-archive:/docker-daemon:; see tpmtls.registry.pull."""
    from .registry.pull import pull as _pull

    return _pull(source, destination, **options)

__all__ = [
    "KeyAuthError",
    "KeyFileError",
    "KeyNotExportable",
    "Pool",
    "ProviderError",
    "TlsSetupError",
    "Tpm",
    "TpmBusy",
    "TpmError",
    "TpmLockout",
    "TpmUnavailable",
    "TpmtlsError",
    "connect",
    "extract_from_ssl",
    "inject_into_ssl",
    "pull",
    "push",
    "pyopenssl_context",
    "requests_session",
    "ssl_context",
]
