"""Which TPM to talk to: the TCTI string, resolved the way tpm2-tools users expect."""

from __future__ import annotations

import os

DEFAULT_TCTI = "device:/dev/tpmrm0"

# TCTIs that talk to a TPM with no resource manager in between: one connection at a
# time and only three transient object slots (docs/facts-tpm.md, "A software TPM and a
# resource manager"), so a pool of one.
# (tpm2-tss also takes a TCTI module's file name in place of its short name.)
_DIRECT = ("swtpm", "mssim", "device:/dev/tpm0", "libtss2-tcti-swtpm", "libtss2-tcti-mssim")


def resolve_tcti(tcti: str | None = None) -> str:
    """Argument > $TPMTLS_TCTI > $TPM2TOOLS_TCTI > device:/dev/tpmrm0."""
    for candidate in (tcti, os.environ.get("TPMTLS_TCTI"), os.environ.get("TPM2TOOLS_TCTI")):
        if candidate:
            return candidate
    return DEFAULT_TCTI


def tcti_source(tcti: str | None = None) -> str:
    """Where `resolve_tcti` found its answer, for `tpmtls doctor` and error messages."""
    if tcti:
        return "--tcti"
    for var in ("TPMTLS_TCTI", "TPM2TOOLS_TCTI"):
        if os.environ.get(var):
            return f"${var}"
    return "default"


def is_direct(tcti: str) -> bool:
    """True when the TCTI reaches a TPM without a resource manager (pool size must be 1)."""
    return tcti.startswith(_DIRECT)


def default_pool_size(tcti: str) -> int:
    """1 for direct TPMs; a few for a resource manager, enough to keep a TPM busy."""
    if is_direct(tcti):
        return 1
    return min(8, 2 * (os.cpu_count() or 2))
