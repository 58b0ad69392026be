"""Keep tpm2-tss's own log lines off stderr without leaving TSS2_LOG in the environment.

tpm2-tss prints `WARNING:esys:…`/`ERROR:esys:…` lines for every TPM error; our errors
already carry the TPM's response code in one line. It has no API to set its log level:
each source file reads $TSS2_LOG once, at the first log call made from that file
(`doLog` in tpm2-tss src/util/log.c caches the level in a per-file static), and every
ESYS API function logs a TRACE line on entry. So, with TSS2_LOG=all+NONE set only for
a moment, tpmtls calls every ESYS function once with a NULL context (it logs, then
returns TSS2_ESYS_RC_BAD_REFERENCE) and runs failing commands through a TCTI that
answers with errors, which pins the files on the error paths (esys_iutil.c …). Then the
environment is put back: child processes never see the variable. If the user set
TSS2_LOG, tpmtls leaves logging alone.
"""

from __future__ import annotations

import ctypes
import os
import threading
from contextlib import contextmanager
from typing import Iterator

from tpm2_pytss import ESAPI, TSS2_Exception
from tpm2_pytss._libtpm2_pytss import ffi, lib
from tpm2_pytss.constants import TPM2_RC
from tpm2_pytss.TCTI import PyTCTI

from .._lifecycle import in_forked_child

_QUIET = "all+NONE"
_lock = threading.RLock()
_primed = False
_loaded: set[str] = set()  # TCTI kinds whose module was loaded with the quiet level


class _RefusingTcti(PyTCTI):
    """A TCTI that fails every command: in transport, or with a TPM error response."""

    def __init__(self, transport_error: bool) -> None:
        super().__init__(max_size=4096)
        self._transport_error = transport_error

    def do_transmit(self, command: bytes) -> None:
        if self._transport_error:
            raise OSError("no TPM here")

    def do_receive(self, timeout: int) -> bytes:
        # TPM_ST_NO_SESSIONS, 10 bytes, TPM_RC_FAILURE
        return (0x8001).to_bytes(2, "big") + (10).to_bytes(4, "big") + int(TPM2_RC.FAILURE).to_bytes(4, "big")


@contextmanager
def _quiet_env() -> Iterator[None]:
    """TSS2_LOG=all+NONE for the duration (callers check the user did not set it)."""
    with _lock:
        os.environ["TSS2_LOG"] = _QUIET
        try:
            yield
        finally:
            os.environ.pop("TSS2_LOG", None)


def _prime() -> None:
    # The TPM command functions (one source file each): those with an _Async half. They
    # all check the context first (not so every helper: Esys_TR_Serialize(NULL) crashes).
    for name in dir(lib):
        if not name.startswith("Esys_") or not hasattr(lib, name + "_Async"):
            continue
        fn = getattr(lib, name)
        kind = ffi.typeof(fn)
        if kind.kind != "function" or not kind.args or kind.args[0].kind != "pointer":
            continue
        fn(*(ffi.NULL if a.kind == "pointer" else 0 for a in kind.args))
    for transport_error in (True, False):
        tcti = _RefusingTcti(transport_error)
        esapi = ESAPI(tcti)
        try:
            for call in (lambda e=esapi: e.get_random(8), lambda e=esapi: e.tr_from_tpmpublic(0x81000001)):
                try:
                    call()
                except TSS2_Exception:
                    pass
        finally:
            esapi.close()


def quiet_tss_logs() -> None:
    """Silence tpm2-tss's log output for this process, once, unless $TSS2_LOG is set."""
    global _primed
    if _primed:
        return
    with _lock:
        if _primed or "TSS2_LOG" in os.environ:
            return
        with _quiet_env():
            _prime()
        _primed = True


@contextmanager
def while_loading(tcti: str) -> Iterator[None]:
    """Around loading a tpm2-tss TCTI module: its files read $TSS2_LOG at their first log.

    Only the first load of each TCTI kind sets the variable (for that moment, under the
    lock), and the module is then pinned in memory: tpm2-tss unloads a TCTI module when
    its context is finalised, and a reloaded module starts with its levels unread, so
    after a context rebuild it would log at the default level. Pinned, later loads find
    the level cached, and the environment, which other threads and any child process
    see, is touched as little as possible.
    """
    kind = tcti.partition(":")[0]
    with _lock:
        if "TSS2_LOG" in os.environ or kind in _loaded:
            yield
            return
        with _quiet_env():
            yield
        if _pin(kind):  # one that failed to load was unloaded: quiet its next load too
            _loaded.add(kind)


_pinned: list[ctypes.CDLL] = []


def _pin(kind: str) -> bool:
    """Hold a reference on the loaded TCTI module (the names tpm2-tss's loader tries) so it is never unloaded."""
    for name in (f"libtss2-tcti-{kind}.so.0", f"libtss2-tcti-{kind}.so", kind):
        try:
            _pinned.append(ctypes.CDLL(name, mode=os.RTLD_NOLOAD | os.RTLD_LAZY))  # only if already loaded
            return True
        except OSError:
            continue
    return False


def _new_lock_in_child() -> None:
    global _lock
    _lock = threading.RLock()  # another thread may have held it at fork time


in_forked_child("tss-log lock", _new_lock_in_child)
