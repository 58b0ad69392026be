"""Which TPM to talk to: the TCTI string, resolved the way tpm2-tools users expect."""

from __future__ import annotations

import os
import re

DEFAULT_TCTI = "device:/dev/tpmrm0"
# tpm2-tss's device TCTI without a path: the resource manager first, else the TPM itself
_DEVICE_DEFAULTS = ("/dev/tpmrm0", "/dev/tpm0")

# TCTIs that talk to a TPM with no resource manager in between: one connection at a
# time and only three transient object slots (docs/facts-tpm.md, "A software TPM and a
# resource manager"; docs/tpm-device.md), so a pool of one.
# (tpm2-tss also takes a TCTI module's file name in place of its short name.)
_DIRECT = ("swtpm", "mssim", "libtss2-tcti-swtpm", "libtss2-tcti-mssim")
_DIRECT_DEVICE = re.compile(r"tpm[0-9]+")  # /dev/tpmN, not /dev/tpmrmN


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


def device_path(tcti: str) -> str:
    """The device file of a 'device' TCTI: its path, or (none given) the first of /dev/tpmrm0, /dev/tpm0 present."""
    name, _, conf = tcti.partition(":")
    path = conf.strip()
    if path.startswith("path="):
        path = path[len("path="):]
    if path:
        return path
    return next((p for p in _DEVICE_DEFAULTS if os.path.exists(p)), _DEVICE_DEFAULTS[0])


def is_direct(tcti: str) -> bool:
    """True when the TCTI reaches a TPM without a resource manager (pool size must be 1)."""
    if tcti.partition(":")[0] == "device":
        return bool(_DIRECT_DEVICE.fullmatch(os.path.basename(device_path(tcti))))
    return tcti.startswith(_DIRECT)


def swaps_every_object(tcti: str) -> bool:
    """True behind the kernel's resource manager (/dev/tpmrmN): it loads, saves and flushes
    every object of an open file around every command, so each object held costs commands."""
    return tcti.partition(":")[0] == "device" and not is_direct(tcti)


def default_pool_size(tcti: str) -> int:
    """1 for direct TPMs; a few for a resource manager, enough to keep a TPM busy."""
    if is_direct(tcti):
        return 1
    return min(8, 2 * (os.cpu_count() or 2))
