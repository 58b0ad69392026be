"""TPM access: TCTI resolution, key files, the session pool and TPM-backed key objects."""

from .device import Tpm, TpmInfo, connect
from .keyfile import KeyBlob, parse_key_bytes, read_key_reference
from .keys import AnyTpmKey, TpmECPrivateKey, TpmKey, TpmRSAPrivateKey
from .pool import Pool, PoolStats, default_pool
from .tcti import resolve_tcti

__all__ = [
    "AnyTpmKey",
    "KeyBlob",
    "Pool",
    "PoolStats",
    "Tpm",
    "TpmECPrivateKey",
    "TpmInfo",
    "TpmKey",
    "TpmRSAPrivateKey",
    "connect",
    "default_pool",
    "parse_key_bytes",
    "read_key_reference",
    "resolve_tcti",
]
