"""tpmtls: mutual TLS for Docker clients and daemons with a private key that never leaves the TPM.

    import tpmtls
    tpm = tpmtls.connect()                    # TCTI: arg > $TPMTLS_TCTI > $TPM2TOOLS_TCTI > /dev/tpmrm0
    key = tpm.create_key("ecc-p256", path="client.key")
    key = tpm.load_key("client.key")          # a cryptography EllipticCurvePrivateKey / RSAPrivateKey
"""

from .errors import (
    KeyAuthError,
    KeyFileError,
    KeyNotExportable,
    TpmBusy,
    TpmError,
    TpmLockout,
    TpmtlsError,
    TpmUnavailable,
)
from .tpm import Pool, Tpm, connect

__version__ = "0.1.0"

__all__ = [
    "KeyAuthError",
    "KeyFileError",
    "KeyNotExportable",
    "Pool",
    "Tpm",
    "TpmBusy",
    "TpmError",
    "TpmLockout",
    "TpmUnavailable",
    "TpmtlsError",
    "connect",
]
