"""``tpm2-abrmd`` on a private bus in front of a TPM: many clients, one TPM connection."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

from .dbus import DBusSession
from .process import (
    POLL_INTERVAL,
    START_TIMEOUT,
    Component,
    child_env,
    fail,
    find_binary,
    has_exited,
    make_workdir,
    register,
    spawn,
    terminate,
    unregister,
)

# Readiness probe, run in a child interpreter: exit 0 = a client could connect
# and run TPM2_GetRandom; 3 = tpm2_pytss missing (use tpm2_getrandom instead).
_PROBE_SCRIPT = """
import sys
try:
    from tpm2_pytss import ESAPI
except ImportError:
    sys.exit(3)
ctx = ESAPI(sys.argv[1])
try:
    ctx.get_random(4)
finally:
    ctx.close()
"""


class Abrmd(Component):
    """``tpm2-abrmd`` on a private :class:`DBusSession`, in front of *backend_tcti*.

    Clients use :attr:`tcti` and must have ``DBUS_SESSION_BUS_ADDRESS`` set to
    ``bus.address`` in their own environment (:class:`TestTpm` does that for
    the current process; for subprocesses use :attr:`TestTpm.env`)."""

    def __init__(
        self,
        backend_tcti: str,
        bus: DBusSession,
        workdir: str | os.PathLike[str] | None = None,
        name: str | None = None,
    ) -> None:
        """Prepare (not start) abrmd; *name* defaults to a unique D-Bus name."""
        self.backend_tcti = backend_tcti
        self.bus = bus
        self.name = name or f"com.intel.tss2.Tabrmd.t{secrets.token_hex(6)}"
        self.workdir, self._owns_workdir = make_workdir(workdir, "tpmtls-abrmd-")
        self.log_path: Path = self.workdir / "tpm2-abrmd.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def tcti(self) -> str:
        """Client TCTI string."""
        return f"tabrmd:bus_name={self.name},bus_type=session"

    def start(self) -> "Abrmd":
        """Start tpm2-abrmd (``--flush-all``) on the private bus and wait (bounded)
        until a client in a child process can connect and get random bytes.
        ``os.environ`` of the calling process is not modified."""
        if self._proc is not None:
            if self.running:
                return self
            self._reap()
        if self.bus.address is None or not self.bus.running:
            raise RuntimeError("Abrmd.start: the DBusSession is not running")
        binary = find_binary("tpm2-abrmd")
        argv = [binary, "--session", f"--dbus-name={self.name}", "--flush-all", f"--tcti={self.backend_tcti}"]
        if os.geteuid() == 0:
            argv.append("--allow-root")
        env = child_env({"DBUS_SESSION_BUS_ADDRESS": self.bus.address})
        self._proc = spawn(argv, self.log_path, env)
        register(self)
        try:
            self._wait_ready(env)
        except BaseException:
            self.kill()
            raise
        return self

    def _wait_ready(self, env: dict[str, str]) -> None:
        assert self._proc is not None
        env = dict(env, TSS2_LOG="all+none")
        use_pytss = True
        deadline = time.monotonic() + START_TIMEOUT
        last = "no attempt"
        for _ in range(200):
            if has_exited(self._proc):
                self._proc.wait()
                raise fail("tpm2-abrmd exited during startup", self.log_path,
                            f"exit code {self._proc.returncode}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if use_pytss:
                argv = [sys.executable, "-c", _PROBE_SCRIPT, self.tcti]
            else:
                argv = [find_binary("tpm2_getrandom"), "4", "-T", self.tcti]
            try:
                r = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, timeout=max(0.5, min(5.0, remaining)))
                if r.returncode == 0:
                    return
                if use_pytss and r.returncode == 3:
                    use_pytss = False
                    continue
                err = r.stderr.decode("utf-8", "replace").strip().splitlines()
                last = f"probe exit {r.returncode}: {err[-1] if err else ''}"
            except subprocess.TimeoutExpired:
                last = "probe timed out"
            time.sleep(POLL_INTERVAL)
        raise fail(f"tpm2-abrmd not usable within {START_TIMEOUT:.0f}s", self.log_path, last)

    def stop(self) -> None:
        """Stop tpm2-abrmd by PID (SIGTERM, bounded wait, SIGKILL) and reap it.  Idempotent."""
        self._reap()

    def kill(self) -> None:
        """SIGKILL tpm2-abrmd (simulates a crash); its clients get transport errors."""
        proc = self._proc
        if proc is None:
            return
        terminate(proc, kill=True)
        self._proc = None
        unregister(self)

    def restart(self) -> None:
        """Stop (if running) and start again with the same D-Bus name and backend;
        clients must open new TCTI/ESAPI contexts afterwards."""
        self.stop()
        self.start()

    def _reap(self) -> None:
        proc = self._proc
        if proc is None:
            return
        terminate(proc)
        self._proc = None
        unregister(self)

    def __repr__(self) -> str:
        return f"<Abrmd name={self.name} pid={self.pid} backend={self.backend_tcti}>"
