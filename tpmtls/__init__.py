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

from ._files import OutputError  # noqa: E402
from ._version import __version__ as __version__  # noqa: E402
from .errors import (  # noqa: E402
    DaemonError,
    EnrollmentError,
    HandshakeError,
    ImageError,
    KeyAuthError,
    KeyFileError,
    KeyNotExportable,
    ProviderError,
    RegistryError,
    TlsSetupError,
    TpmBusy,
    TpmError,
    TpmLockout,
    TpmtlsError,
    TpmUnavailable,
    UsageError,
)
from .tls import extract_from_ssl, inject_into_ssl, pyopenssl_context, requests_session, ssl_context  # noqa: E402
from .tls._errors import KeyLoadError, TpmHandshakeError  # noqa: E402
from .tpm import Pool, Tpm, connect  # noqa: E402
from .tpm.keys import AnyTpmKey, TpmECPrivateKey, TpmKey, TpmRSAPrivateKey  # noqa: E402

if TYPE_CHECKING:
    from .docker.client import docker_client
    from .docker.credentials import CredentialsError
    from .enroll.pairing_client import ensure_server_enrolled
    from .registry.pull import pull
    from .registry.push import push
    from .tls._adapter import TpmSSLError

# Imported on first use (PEP 562), with their own typed signatures: signing needs
# neither the registry client nor docker-py.
_LAZY = {"push": ".registry.push", "pull": ".registry.pull", "docker_client": ".docker.client",
         "ensure_server_enrolled": ".enroll.pairing_client",
         # errors of modules that import requests or docker-py: also on first use
         "TpmSSLError": ".tls._adapter", "CredentialsError": ".docker.credentials"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tpmtls' has no attribute {name!r}")


__all__ = [
    "AnyTpmKey",
    "CredentialsError",
    "DaemonError",
    "EnrollmentError",
    "HandshakeError",
    "ImageError",
    "KeyAuthError",
    "KeyFileError",
    "KeyLoadError",
    "KeyNotExportable",
    "OutputError",
    "Pool",
    "ProviderError",
    "RegistryError",
    "TlsSetupError",
    "Tpm",
    "TpmBusy",
    "TpmECPrivateKey",
    "TpmError",
    "TpmHandshakeError",
    "TpmKey",
    "TpmLockout",
    "TpmRSAPrivateKey",
    "TpmSSLError",
    "TpmUnavailable",
    "TpmtlsError",
    "UsageError",
    "connect",
    "docker_client",
    "ensure_server_enrolled",
    "extract_from_ssl",
    "inject_into_ssl",
    "pull",
    "push",
    "pyopenssl_context",
    "requests_session",
    "ssl_context",
]
