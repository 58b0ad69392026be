"""Reading TSS2 response codes: which mean "reconnect", "try again", "bad password"."""

from __future__ import annotations

from tpm2_pytss import TSS2_Exception
from tpm2_pytss.constants import TPM2_RC, TSS2_RC

_LAYER_MASK = 0xFF0000
_TPM_LAYER = 0
_TCTI_LAYER = int(TSS2_RC.TCTI_RC_LAYER)
_RESMGR_LAYERS = (int(TSS2_RC.RESMGR_RC_LAYER), int(TSS2_RC.RESMGR_TPM_RC_LAYER))
_ESYS_LAYER = int(TSS2_RC.ESAPI_RC_LAYER)

# TPM 2.0 Part 2, 6.6.3: warnings that mean "send the same command again".
_RETRY = {int(TPM2_RC.RETRY), int(TPM2_RC.YIELDED), int(TPM2_RC.TESTING)}

# Errors that mean our ESAPI context no longer matches the TPM: the TPM was reset
# (INITIALIZE, stale handles) or the transport went away. The fix is a new context.
_STALE_TPM = {int(TPM2_RC.INITIALIZE), int(TPM2_RC.HANDLE)} | {
    int(TPM2_RC.REFERENCE_H0) + i for i in range(7)
}
_STALE_ESYS = {
    int(TSS2_RC.ESYS_RC_BAD_SEQUENCE),
    int(TSS2_RC.ESYS_RC_MALFORMED_RESPONSE),
    int(TSS2_RC.ESYS_RC_INSUFFICIENT_RESPONSE),
    int(TSS2_RC.ESYS_RC_GENERAL_FAILURE),
    int(TSS2_RC.ESYS_RC_IO_ERROR),
}

AUTH_ERRORS = {int(TPM2_RC.AUTH_FAIL), int(TPM2_RC.BAD_AUTH)}
LOCKOUT = int(TPM2_RC.LOCKOUT)
OBJECT_MEMORY = int(TPM2_RC.OBJECT_MEMORY)


def layer(exc: TSS2_Exception) -> int:
    return int(exc.rc) & _LAYER_MASK


def error(exc: TSS2_Exception) -> int:
    """The TPM error with handle/parameter/session numbers stripped (TPM layer only)."""
    return int(exc.error) if layer(exc) == _TPM_LAYER else int(exc.rc)


def is_retry(exc: TSS2_Exception) -> bool:
    return layer(exc) == _TPM_LAYER and error(exc) in _RETRY


def is_context_lost(exc: TSS2_Exception) -> bool:
    """Transport gone, resource manager restarted, or TPM reset under us."""
    lay = layer(exc)
    if lay == _TCTI_LAYER or lay in _RESMGR_LAYERS:
        return True
    if lay == _ESYS_LAYER:
        # ESYS passes TCTI failures up with its own layer in some versions.
        return int(exc.rc) in _STALE_ESYS or (int(exc.rc) & 0xFFFF) in (
            int(TSS2_RC.TCTI_RC_IO_ERROR) & 0xFFFF,
            int(TSS2_RC.TCTI_RC_NO_CONNECTION) & 0xFFFF,
        )
    return lay == _TPM_LAYER and error(exc) in _STALE_TPM


def is_auth(exc: TSS2_Exception) -> bool:
    return layer(exc) == _TPM_LAYER and error(exc) in AUTH_ERRORS


def is_lockout(exc: TSS2_Exception) -> bool:
    return layer(exc) == _TPM_LAYER and error(exc) == LOCKOUT


def is_object_memory(exc: TSS2_Exception) -> bool:
    return layer(exc) == _TPM_LAYER and error(exc) in (OBJECT_MEMORY, int(TPM2_RC.SESSION_MEMORY))


def describe(exc: BaseException) -> str:
    """`<decoded text> (rc 0x…)` — the TPM's own words plus the code to search for."""
    if isinstance(exc, TSS2_Exception):
        return f"{exc} (rc 0x{int(exc.rc):x})"
    return str(exc) or type(exc).__name__
