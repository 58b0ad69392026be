"""A software TPM 2.0 (``swtpm socket``) on two consecutive loopback ports, state kept across restarts."""

from __future__ import annotations

import os
import struct
import subprocess
import time
from pathlib import Path

from . import tpm_wire as wire
from .ports import HOST, free_port
from .process import (
    POLL_INTERVAL,
    START_TIMEOUT,
    Component,
    child_env,
    fail,
    find_binary,
    has_exited,
    log_marker,
    make_workdir,
    register,
    spawn,
    tail,
    terminate,
    unregister,
)


class SwTpm(Component):
    """A software TPM 2.0 (``swtpm socket``) on 127.0.0.1, data port ``port`` and
    control port ``port + 1``; its NV state lives in ``state_dir`` so it survives
    :meth:`restart`.  It serves one socket connection at a time and has no
    resource manager: put :class:`Abrmd` in front for concurrent clients."""

    #: Lenient dictionary-attack parameters set at every start: tests hard-kill
    #: swtpm, and each unclean stop while a DA-protected key was in use is a strike.
    DA_MAX_TRIES = 1000
    DA_RECOVERY_TIME = 1
    DA_LOCKOUT_RECOVERY = 1

    def __init__(self, workdir: str | os.PathLike[str] | None = None) -> None:
        """Prepare (not start) a swtpm; *workdir* defaults to a new temp dir."""
        self.workdir, self._owns_workdir = make_workdir(workdir, "tpmtls-swtpm-")
        self.state_dir: Path = self.workdir / "state"
        self.log_path: Path = self.workdir / "swtpm.log"
        self.port: int | None = None
        self.ctrl_port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- info -------------------------------------------------------------
    @property
    def tcti(self) -> str:
        """TCTI string for a direct (single-client) connection."""
        if self.port is None:
            raise RuntimeError("SwTpm has not been started yet")
        return f"swtpm:host={HOST},port={self.port}"

    # -- lifecycle --------------------------------------------------------
    def start(self) -> "SwTpm":
        """Start swtpm on fresh free ports, wait until it answers a TPM command
        (bounded), set lenient DA parameters and reset the DA lockout."""
        if self._proc is not None:
            if self.running:
                return self
            self._reap()
        binary = find_binary("swtpm")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        last: RuntimeError | None = None
        for _ in range(5):
            port = free_port(2)
            try:
                self._launch(binary, port)
                return self
            except _PortInUse as e:
                last = e
                continue
        assert last is not None
        raise last

    def restart(self, clean: bool = True) -> None:
        """Start again on the SAME ports and SAME state dir (a TPM "reboot").

        If it is still running it is stopped first (``clean`` as in :meth:`stop`).
        A running abrmd needs no restart: its swtpm TCTI connects per command,
        so commands fail with a TCTI I/O error only while swtpm is down.  Its
        clients' loaded objects and sessions are gone after the reboot (abrmd
        cannot reload their saved contexts), so clients must reload keys;
        stateless commands on an existing ESAPI context keep working.
        """
        if self.port is None:
            self.start()
            return
        self.stop(clean=clean)
        binary = find_binary("swtpm")
        deadline = time.monotonic() + START_TIMEOUT
        for _ in range(40):
            try:
                self._launch(binary, self.port)
                return
            except _PortInUse as e:
                if time.monotonic() >= deadline:
                    raise RuntimeError(f"swtpm restart: port {self.port} stays in use: {e}") from None
                time.sleep(0.25)
        raise RuntimeError(f"swtpm restart: port {self.port} stays in use")

    def stop(self, clean: bool = True) -> None:
        """Stop swtpm.  With *clean*, first send TPM2_Shutdown(CLEAR) over a direct
        connection (skipped when another client, e.g. abrmd, holds the only
        connection slot) so the next start is orderly and no DA strike is
        counted; then SIGTERM by PID, bounded wait, SIGKILL.  Idempotent."""
        proc = self._proc
        if proc is None:
            return
        if clean and not has_exited(proc) and self.port is not None:
            busy = wire.established_clients(self.port)
            if busy:
                log_marker(self.log_path, f"TPM2_Shutdown skipped: {busy} client connection(s) open")
            else:
                try:
                    rc = wire.tpm_raw(self.port, wire.cmd_no_auth(wire.TPM_CC_SHUTDOWN, struct.pack(">H", wire.TPM_SU_CLEAR)))
                    log_marker(self.log_path, f"TPM2_Shutdown(CLEAR) rc=0x{rc:x}")
                except OSError as e:
                    log_marker(self.log_path, f"TPM2_Shutdown(CLEAR) failed: {e}")
        log_marker(self.log_path, f"stopping pid {proc.pid} (SIGTERM)")
        terminate(proc)
        self._proc = None
        unregister(self)

    def kill(self) -> None:
        """SIGKILL swtpm without TPM2_Shutdown (simulates a crash / power loss)."""
        proc = self._proc
        if proc is None:
            return
        if not has_exited(proc):
            log_marker(self.log_path, f"killing pid {proc.pid} (SIGKILL, no TPM2_Shutdown)")
        terminate(proc, kill=True)
        self._proc = None
        unregister(self)

    def _reap(self) -> None:
        if self._proc is not None:
            terminate(self._proc)
            self._proc = None
            unregister(self)

    # -- internals --------------------------------------------------------
    def _launch(self, binary: str, port: int) -> None:
        argv = [
            binary, "socket", "--tpm2",
            "--tpmstate", f"dir={self.state_dir}",
            "--server", f"type=tcp,port={port},bindaddr={HOST}",
            "--ctrl", f"type=tcp,port={port + 1},bindaddr={HOST}",
            "--flags", "not-need-init,startup-clear",
        ]
        self._proc = spawn(argv, self.log_path, child_env())
        register(self)
        self.port, self.ctrl_port = port, port + 1
        try:
            self._wait_ready()
            self._init_dictionary_attack()
        except BaseException:
            self.kill()
            raise

    def _wait_ready(self) -> None:
        assert self._proc is not None and self.port is not None
        probe = wire.cmd_no_auth(wire.TPM_CC_GET_RANDOM, struct.pack(">H", 8))
        deadline = time.monotonic() + START_TIMEOUT
        last = "no answer"
        for _ in range(int(START_TIMEOUT / POLL_INTERVAL) + 1):
            if has_exited(self._proc):
                self._proc.wait()
                last = " ".join(tail(self.log_path, 3))
                if "Address already in use" in last:
                    raise _PortInUse(f"swtpm could not bind port {self.port}/{self.port + 1}: {last}")
                raise fail("swtpm exited during startup", self.log_path, f"exit code {self._proc.returncode}")
            try:
                rc = wire.tpm_raw(self.port, probe, timeout=1.0)
                if rc == 0:
                    return
                last = f"TPM2_GetRandom rc=0x{rc:x}"
                if rc not in (wire.TPM_RC_INITIALIZE, wire.TPM_RC_RETRY, wire.TPM_RC_YIELDED, wire.TPM_RC_TESTING):
                    raise fail("swtpm answers with an error", self.log_path, last)
            except OSError as e:
                last = str(e)
            if time.monotonic() >= deadline:
                break
            time.sleep(POLL_INTERVAL)
        raise fail(f"swtpm did not answer within {START_TIMEOUT:.0f}s", self.log_path, last)

    def _init_dictionary_attack(self) -> None:
        assert self.port is not None
        params = struct.pack(">III", self.DA_MAX_TRIES, self.DA_RECOVERY_TIME, self.DA_LOCKOUT_RECOVERY)
        for name, cmd in (
            ("TPM2_DictionaryAttackLockReset", wire.cmd_lockout_pw(wire.TPM_CC_DA_LOCK_RESET, b"")),
            ("TPM2_DictionaryAttackParameters", wire.cmd_lockout_pw(wire.TPM_CC_DA_PARAMETERS, params)),
        ):
            try:
                rc = wire.tpm_raw(self.port, cmd)
            except OSError as e:
                raise fail(f"swtpm: {name} failed", self.log_path, str(e)) from None
            if rc != 0:
                raise fail(f"swtpm: {name} failed", self.log_path, f"rc=0x{rc:x}")

    def __repr__(self) -> str:
        return f"<SwTpm port={self.port} pid={self.pid} state_dir={self.state_dir}>"


class _PortInUse(RuntimeError):
    """swtpm could not bind its ports (raced with another process)."""
