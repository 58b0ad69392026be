"""TSS2 response codes as tpmtls errors: one line naming the operation, the key and what to do.

`rc.py` reads a code (retry? reconnect? bad password?); this module turns a code the
pool gave up on into the exception a caller catches by type, keeping the TPM's own
words and the code to search for.
"""

from __future__ import annotations

from tpm2_pytss import TSS2_Exception

from ..errors import KeyAuthError, TpmError, TpmLockout, TpmtlsError, TpmUnavailable
from . import rc
from .keyfile import KeyBlob


def to_error(e: TSS2_Exception, op: str, blob: KeyBlob | None, tcti: str, problem: str | None = None) -> TpmtlsError:
    """The tpmtls error for `e`, raised by operation `op` (with key `blob`) on TCTI `tcti`.

    `problem`: what the transport said went wrong (e.g. a device's errno), if it said.
    """
    what = f"{op} with {blob.source}" if blob else op
    if rc.is_auth(e):
        return KeyAuthError(f"{blob.source if blob else 'TPM'}: wrong password for this key ({rc.describe(e)})", int(e.rc))
    if rc.is_lockout(e):
        return TpmLockout(
            f"{what}: the TPM is in dictionary-attack lockout ({rc.describe(e)}); wait for its recovery "
            "time or clear it with 'tpm2_dictionarylockout --clear-lockout'",
            int(e.rc),
        )
    if rc.is_context_lost(e):
        why = f"{problem} (rc 0x{int(e.rc):x})" if problem else rc.describe(e)
        return TpmUnavailable(f"{what}: lost the TPM at {tcti!r} and could not get it back: {why}")
    return TpmError(f"{what}: the TPM refused it: {rc.describe(e)}", int(e.rc))
