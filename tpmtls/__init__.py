"""tpmtls: mutual TLS for Docker clients and daemons with a private key that never leaves the TPM.

    import tpmtls
    tpm = tpmtls.connect()                    # TCTI: arg > $TPMTLS_TCTI > $TPM2TOOLS_TCTI > /dev/tpmrm0
    key = tpm.create_key("ecc-p256", path="client.key")
    key = tpm.load_key("client.key")          # a cryptography EllipticCurvePrivateKey / RSAPrivateKey
"""

from typing import TYPE_CHECKING

# First, before anything imports cryptography: give its OpenSSL the TPM shim provider
# (it reads its config only once, at its first import). See tpmtls/provider.
from .provider import bootstrap as _bootstrap

_bootstrap()

from ._files import OutputError  # noqa: E402
from ._lazy import lazy_attributes  # noqa: E402
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

if TYPE_CHECKING:
    from .docker.client import docker_client
    from .docker.credentials import CredentialsError
    from .enroll.pairing_client import ensure_server_enrolled
    from .registry.pull import pull
    from .registry.push import push
    from .tls import extract_from_ssl, inject_into_ssl, pyopenssl_context, requests_session, ssl_context
    from .tls._adapter import TpmSSLError
    from .tls._errors import KeyLoadError, TpmHandshakeError
    from .tpm import Pool, Tpm, connect
    from .tpm.keys import AnyTpmKey, TpmECPrivateKey, TpmKey, TpmRSAPrivateKey

# Imported on first use (PEP 562), with their own typed signatures, so a command pays only
# for what it uses: `tpmtls-push --help` needs neither tpm2-pytss nor the registry client,
# signing needs neither the registry client nor docker-py (docs/performance.md, "Start-up").
_LAZY = {"push": ".registry.push", "pull": ".registry.pull", "docker_client": ".docker.client",
         "ensure_server_enrolled": ".enroll.pairing_client",
         "connect": ".tpm", "Pool": ".tpm", "Tpm": ".tpm",
         "AnyTpmKey": ".tpm.keys", "TpmKey": ".tpm.keys", "TpmECPrivateKey": ".tpm.keys", "TpmRSAPrivateKey": ".tpm.keys",
         "ssl_context": ".tls", "pyopenssl_context": ".tls", "requests_session": ".tls", "inject_into_ssl": ".tls",
         "extract_from_ssl": ".tls",
         # errors of modules that import ssl, requests or docker-py: also on first use
         "KeyLoadError": ".tls._errors", "TpmHandshakeError": ".tls._errors",
         "TpmSSLError": ".tls._adapter", "CredentialsError": ".docker.credentials"}


__getattr__ = lazy_attributes(__name__, _LAZY, globals())


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
