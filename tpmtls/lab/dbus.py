"""A private D-Bus session bus (``dbus-daemon --session --nofork``) whose PID the lab owns."""

from __future__ import annotations

import atexit
import os
import selectors
import subprocess
import threading
import time
from pathlib import Path

from .process import (
    START_TIMEOUT,
    STOP_TIMEOUT,
    Component,
    child_env,
    fail,
    find_binary,
    make_workdir,
    register,
    spawn,
    terminate,
    unregister,
    wait_exited,
)

# private D-Bus session bus
# --------------------------------------------------------------------------


class DBusSession(Component):
    """A private ``dbus-daemon --session`` (``--nofork``, so we own its PID).

    Its socket lives in the work directory when the path is short enough for a
    unix socket, so nothing is left in /tmp even after SIGKILL."""

    def __init__(self, workdir: str | os.PathLike[str] | None = None) -> None:
        """Prepare (not start) a bus; *workdir* defaults to a new temp dir."""
        self.workdir, self._owns_workdir = make_workdir(workdir, "tpmtls-dbus-")
        self.log_path: Path = self.workdir / "dbus-daemon.log"
        self.address: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "DBusSession":
        """Start the daemon and read its address from stdout (bounded wait)."""
        if self._proc is not None:
            if self.running:
                return self
            self.stop()
        binary = find_binary("dbus-daemon")
        argv = [binary, "--session", "--nofork", "--nopidfile", "--nosyslog", "--print-address=1"]
        sockdir = str(self.workdir.resolve())
        if len(sockdir) <= 80:  # sun_path holds 108 bytes, and dbus adds "/dbus-" plus a 10-character random name
            argv.append(f"--address=unix:dir={sockdir}")
        self._proc = spawn(argv, self.log_path, child_env(), stdout=subprocess.PIPE)
        register(self)
        try:
            self.address = self._read_address()
        except BaseException:
            self.stop()
            raise
        return self

    def _read_address(self) -> str:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + START_TIMEOUT
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            for _ in range(1000):
                if b"\n" in buf:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise fail(f"dbus-daemon printed no address within {START_TIMEOUT:.0f}s", self.log_path)
                if not sel.select(timeout=min(remaining, 0.5)):
                    continue
                chunk = os.read(fd, 4096)
                if not chunk:
                    wait_exited(self._proc, STOP_TIMEOUT)
                    raise fail("dbus-daemon closed stdout without printing an address", self.log_path,
                                f"exit code {self._proc.poll()}")
                buf += chunk
        address = buf.split(b"\n", 1)[0].decode().strip()
        if not address:
            raise fail("dbus-daemon printed an empty address", self.log_path)
        return address

    def stop(self) -> None:
        """Stop the daemon by PID (SIGTERM, bounded wait, SIGKILL) and reap it.  Idempotent."""
        proc = self._proc
        if proc is None:
            return
        terminate(proc)
        if proc.stdout is not None:
            proc.stdout.close()
        self._proc = None
        self.address = None
        unregister(self)

    def __repr__(self) -> str:
        return f"<DBusSession pid={self.pid} address={self.address}>"

#
# libtss2-tcti-tabrmd (what tpm2-tools and a plain tpm2-pytss ESAPI("tabrmd:...")
# load) talks D-Bus through GLib, and GLib keeps ONE session-bus connection per
# process, made from $DBUS_SESSION_BUS_ADDRESS the first time a client connects
# (measured: a second bus in the same process is unreachable, "Fails to connect
# to next lower layer"). tpmtls's own pool does not use it (tpmtls/tpm/transport.py
# reads the variable at each connect), but in-process users of that TCTI may. So
# every abrmd started for this process sits on one private bus, each under its
# own --dbus-name, and the bus lives until the interpreter exits.

_shared_bus: DBusSession | None = None
_shared_bus_lock = threading.Lock()


def shared_bus() -> DBusSession:
    """This process' private D-Bus session bus, started on first use.

    Sets ``os.environ["DBUS_SESSION_BUS_ADDRESS"]`` to it (the tabrmd TCTI reads the
    variable there) and restores the previous value at exit.
    """
    global _shared_bus
    with _shared_bus_lock:
        if _shared_bus is None or not _shared_bus.running:
            bus = DBusSession().start()
            previous = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
            assert bus.address is not None
            os.environ["DBUS_SESSION_BUS_ADDRESS"] = bus.address
            _shared_bus = bus

            def _restore() -> None:
                bus.stop()
                if previous is None:
                    os.environ.pop("DBUS_SESSION_BUS_ADDRESS", None)
                else:
                    os.environ["DBUS_SESSION_BUS_ADDRESS"] = previous

            atexit.register(_restore)
        return _shared_bus
