"""Throw-away TPM 2.0 stacks for tests: swtpm + private D-Bus + tpm2-abrmd.

Why this exists: tests (ours and those of tpmtls users) need a real TPM that
several clients can use at once, that can be "rebooted" or crashed on purpose,
and that never touches the host's TPM, system bus or ports other than on
127.0.0.1.  The stack is:

* :class:`SwTpm` -- ``swtpm socket --tpm2`` on two consecutive free TCP ports
  (data + control).  swtpm serves one socket connection at a time (the
  tpm2-tss swtpm TCTI reconnects per command, so direct contexts interleave,
  but without a resource manager they share the TPM's few object slots).
* :class:`DBusSession` -- a private ``dbus-daemon --session`` whose PID we own;
  :func:`shared_bus` is the one every abrmd of this process uses.
* :class:`Abrmd` -- ``tpm2-abrmd`` on that private bus, multiplexing many
  clients onto the swtpm connection (TCTI ``tabrmd:bus_name=...,bus_type=session``).
* :class:`TestTpm` -- the three together, in one temporary directory.

Design notes:

* Every child is started with ``start_new_session=True``, logs to a file in
  the work directory, is stopped by PID (SIGTERM, bounded wait, SIGKILL) and
  reaped, so no zombie or orphan remains; an ``atexit`` hook stops whatever is
  still running when the interpreter exits normally.
* ``OPENSSL_CONF`` from ``os.environ`` is never passed to the children.
* TPM commands needed by the harness itself (readiness probe, dictionary-attack
  setup, ``TPM2_Shutdown``) are sent as raw TPM 2.0 command bytes over a socket
  with timeouts, so a wedged or busy swtpm can never hang the test process and
  the harness does not load any TCTI in-process.
* The abrmd readiness probe runs in a child Python process (``tpm2_pytss``
  ``ESAPI(tcti).get_random(4)``, falling back to ``tpm2_getrandom``) with
  ``DBUS_SESSION_BUS_ADDRESS`` set in *its* environment only.  The tabrmd TCTI
  reads that variable from the calling process' environment and GLib caches
  the session-bus connection process-wide, so probing in-process would either
  require mutating ``os.environ`` behind the caller's back or pin a bus
  connection in the caller.  :func:`shared_bus` (not :class:`Abrmd`) is what
  sets ``os.environ["DBUS_SESSION_BUS_ADDRESS"]`` for in-process clients, once
  per process, and restores it at exit.
"""

from __future__ import annotations

import atexit
from abc import ABC, abstractmethod
import os
import random
import secrets
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, TypeVar

from ._latency import LatencyForwarder, TpmTiming

__all__ = ["free_port", "SwTpm", "DBusSession", "Abrmd", "TestTpm", "TpmTiming"]

#: Bounded wait for any component to come up.
START_TIMEOUT = 10.0
#: Bounded wait for a process to exit after SIGTERM before SIGKILL.
STOP_TIMEOUT = 5.0
_POLL_INTERVAL = 0.05

_HOST = "127.0.0.1"

# --------------------------------------------------------------------------
# Process bookkeeping (atexit cleanup)
# --------------------------------------------------------------------------

_registry_lock = threading.Lock()
# Objects with a ``_atexit_stop()`` method, in start order.
_live: list[Any] = []
# Temporary work directories we created and still have to delete.
_temp_dirs: set[str] = set()
# Ports handed out by free_port() in this process (avoid double hand-outs).
_reserved_ports: set[int] = set()


def _register(obj: Any) -> None:
    with _registry_lock:
        if not any(o is obj for o in _live):
            _live.append(obj)


def _unregister(obj: Any) -> None:
    with _registry_lock:
        _live[:] = [o for o in _live if o is not obj]


def _atexit_cleanup() -> None:
    """Stop everything still running (last started first) and drop temp dirs."""
    with _registry_lock:
        objs = list(reversed(_live))
    for obj in objs:
        try:
            obj._atexit_stop()
        except Exception:  # pragma: no cover - best effort at interpreter exit
            pass
    with _registry_lock:
        dirs = list(_temp_dirs)
        _temp_dirs.clear()
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


atexit.register(_atexit_cleanup)


def _make_workdir(workdir: str | os.PathLike[str] | None, prefix: str) -> tuple[Path, bool]:
    """Return (directory, owned): a created temp dir if *workdir* is None."""
    if workdir is None:
        path = Path(tempfile.mkdtemp(prefix=prefix))
        with _registry_lock:
            _temp_dirs.add(str(path))
        return path, True
    path = Path(workdir)
    path.mkdir(parents=True, exist_ok=True)
    return path, False


def _remove_workdir(path: Path) -> None:
    with _registry_lock:
        _temp_dirs.discard(str(path))
    shutil.rmtree(path, ignore_errors=True)


# Debian packages providing each binary, for clear "not installed" errors.
_PACKAGES = {
    "swtpm": "swtpm",
    "tpm2-abrmd": "tpm2-abrmd",
    "dbus-daemon": "dbus-daemon (pulled in by dbus)",
    "tpm2_getrandom": "tpm2-tools",
    "docker-registry": "docker-registry",
    "dockerd": "docker.io",
}


def _find_binary(name: str) -> str:
    """Absolute path of *name*, also searching sbin dirs (tpm2-abrmd lives there)."""
    found = shutil.which(name)
    if found:
        return found
    for d in ("/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin"):
        cand = os.path.join(d, name)
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    pkg = _PACKAGES.get(name, name)
    raise FileNotFoundError(
        f"{name} not found (searched PATH and sbin directories); install the Debian package {pkg}"
    )


def _child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """os.environ for a child: without OPENSSL_CONF, plus *extra*."""
    env = dict(os.environ)
    env.pop("OPENSSL_CONF", None)
    if extra:
        env.update(extra)
    return env


def _log_marker(log_path: Path, text: str) -> None:
    """Append a harness line to a component log (to tell restarts apart)."""
    try:
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(f"--- tpmtls.testing {time.strftime('%H:%M:%S')}: {text}\n")
    except OSError:
        pass


def _spawn(
    argv: list[str],
    log_path: Path,
    env: dict[str, str],
    stdout: int | None = None,
) -> subprocess.Popen[bytes]:
    """Start *argv* in its own session, stderr (and stdout unless given) to *log_path*."""
    _log_marker(log_path, "exec " + " ".join(argv))
    with open(log_path, "ab") as logf:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=logf if stdout is None else stdout,
            stderr=logf,
            env=env,
            start_new_session=True,
            close_fds=True,
        )


def _has_exited(proc: subprocess.Popen[bytes]) -> bool:
    """True if *proc* has exited, WITHOUT reaping it (its PID stays reserved)."""
    if proc.returncode is not None:
        return True
    try:
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # already reaped elsewhere
        return True
    return info is not None


def _wait_exited(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait (bounded) until *proc* exits, without reaping it."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.01) + 2):
        if _has_exited(proc):
            return True
        if time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    return _has_exited(proc)


def _terminate(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT, kill: bool = False) -> None:
    """Stop *proc* by PID (SIGTERM, bounded wait, SIGKILL), kill stragglers of its
    session while the PID is still held by the zombie leader, then reap it."""
    if proc.returncode is None:
        if not _has_exited(proc):
            try:
                os.kill(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
            except ProcessLookupError:
                pass
            if not kill and not _wait_exited(proc, timeout):
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            _wait_exited(proc, timeout)
        # The leader is a zombie now (not reaped), so its PID == PGID cannot
        # have been reused: safe to kill anything else left in its group.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:  # pragma: no cover - unkillable process
        pass


def _tail(path: Path | None, lines: int = 15) -> list[str]:
    """Last *lines* non-empty lines of a log file (empty list if unreadable)."""
    if path is None:
        return []
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 16384))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [ln.rstrip() for ln in data.splitlines() if ln.strip()][-lines:]


def _fail(what: str, log_path: Path | None, extra: str = "") -> RuntimeError:
    """One-line RuntimeError: what failed + last log lines."""
    tail = " | ".join(_tail(log_path, 8))
    msg = what
    if extra:
        msg += f" ({extra})"
    msg += f"; log {log_path}: {tail or '<empty>'}"
    return RuntimeError(msg.replace("\n", " "))


# --------------------------------------------------------------------------
# Ports
# --------------------------------------------------------------------------


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            lo, hi = (int(x) for x in f.read().split())
            return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def _ports_bindable(first: int, count: int) -> bool:
    socks: list[socket.socket] = []
    try:
        for p in range(first, first + count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind((_HOST, p))
        return True
    except OSError:
        return False
    finally:
        for s in socks:
            s.close()


def free_port(count: int = 1) -> int:
    """A free 127.0.0.1 TCP port p such that p .. p+count-1 are all free (swtpm needs 2 consecutive).

    Ports are preferably chosen below the kernel's ephemeral range so that
    outgoing client connections cannot grab them between stop and restart of a
    server on the same port.  Ports returned earlier in this process are never
    returned again.
    """
    if count < 1:
        raise ValueError("count must be >= 1")
    eph_lo, eph_hi = _ephemeral_range()
    rng = random.Random()

    def ok(p: int) -> bool:
        if p < 1024 or p + count - 1 > 65535:
            return False
        with _registry_lock:
            if any(q in _reserved_ports for q in range(p, p + count)):
                return False
        if not _ports_bindable(p, count):
            return False
        with _registry_lock:
            _reserved_ports.update(range(p, p + count))
        return True

    # 1) random ports below the ephemeral range (stable across restarts).
    lo, hi = 10000, eph_lo - count
    if hi > lo:
        for _ in range(200):
            p = rng.randint(lo, hi)
            if ok(p):
                return p
    # 2) kernel-assigned ports.
    for _ in range(200):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((_HOST, 0))
            p = s.getsockname()[1]
        finally:
            s.close()
        if ok(p):
            return p
    raise RuntimeError(f"could not find {count} consecutive free TCP ports on {_HOST}")


# --------------------------------------------------------------------------
# Raw TPM 2.0 commands (with timeouts)
# --------------------------------------------------------------------------

_TPM_ST_NO_SESSIONS = 0x8001
_TPM_ST_SESSIONS = 0x8002
_TPM_CC_GET_RANDOM = 0x017B
_TPM_CC_SHUTDOWN = 0x0145
_TPM_CC_DA_PARAMETERS = 0x013A
_TPM_CC_DA_LOCK_RESET = 0x0139
_TPM_RH_LOCKOUT = 0x4000000A
_TPM_RS_PW = 0x40000009
_TPM_SU_CLEAR = 0x0000
_TPM_RC_INITIALIZE = 0x0100
_TPM_RC_RETRY = 0x0922
_TPM_RC_YIELDED = 0x0908
_TPM_RC_TESTING = 0x090A


def _tpm_cmd_no_auth(cc: int, params: bytes) -> bytes:
    return struct.pack(">HII", _TPM_ST_NO_SESSIONS, 10 + len(params), cc) + params


def _tpm_cmd_lockout_pw(cc: int, params: bytes) -> bytes:
    """Command on TPM_RH_LOCKOUT with an empty password authorization."""
    auth = struct.pack(">IHBH", _TPM_RS_PW, 0, 0, 0)  # handle, nonce, attrs, hmac
    body = struct.pack(">I", _TPM_RH_LOCKOUT) + struct.pack(">I", len(auth)) + auth + params
    return struct.pack(">HII", _TPM_ST_SESSIONS, 10 + len(body), cc) + body


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    for _ in range(10000):
        if len(buf) >= n:
            break
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("TPM closed the connection")
        buf += chunk
    return buf


def _tpm_raw(port: int, command: bytes, timeout: float = 2.0) -> int:
    """Send one raw TPM command to swtpm's data port; return the response code."""
    with socket.create_connection((_HOST, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(command)
        _tag, size, rc = struct.unpack(">HII", _recv_exact(sock, 10))
        if size > 10:
            _recv_exact(sock, min(size - 10, 65536))
        return rc


def _established_clients(port: int) -> int:
    """Number of ESTABLISHED TCP connections to 127.0.0.1:port (server side)."""
    want = f"0100007F:{port:04X}"
    n = 0
    try:
        with open("/proc/net/tcp", encoding="ascii") as f:
            next(f, None)
            for line in f:
                fields = line.split()
                if len(fields) > 3 and fields[1] == want and fields[3] == "01":
                    n += 1
    except OSError:
        return 0
    return n


# --------------------------------------------------------------------------
# swtpm
# --------------------------------------------------------------------------


_C = TypeVar("_C", bound="_Component")


class _Component(ABC):
    """Lifecycle shared by the fixtures: `with X() as x:` starts, and stops on exit
    (removing a work directory it created); the atexit hook stops what is left."""

    workdir: Path
    _owns_workdir: bool
    _proc: "subprocess.Popen[bytes] | None" = None

    @property
    def pid(self) -> int | None:
        """PID of the running process, or None."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self._proc is not None and not _has_exited(self._proc)

    @abstractmethod
    def start(self) -> Any:
        """Start the process (bounded wait until it serves); returns self."""

    @abstractmethod
    def stop(self) -> None:
        """Stop it by PID; idempotent."""

    def _atexit_stop(self) -> None:
        self.stop()

    def __enter__(self: _C) -> _C:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        try:
            self.stop()
        finally:
            if self._owns_workdir:
                _remove_workdir(self.workdir)


class SwTpm(_Component):
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
        self.workdir, self._owns_workdir = _make_workdir(workdir, "tpmtls-swtpm-")
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
        return f"swtpm:host={_HOST},port={self.port}"

    # -- lifecycle --------------------------------------------------------
    def start(self) -> "SwTpm":
        """Start swtpm on fresh free ports, wait until it answers a TPM command
        (bounded), set lenient DA parameters and reset the DA lockout."""
        if self._proc is not None:
            if self.running:
                return self
            self._reap()
        binary = _find_binary("swtpm")
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
        binary = _find_binary("swtpm")
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
        if clean and not _has_exited(proc) and self.port is not None:
            busy = _established_clients(self.port)
            if busy:
                _log_marker(self.log_path, f"TPM2_Shutdown skipped: {busy} client connection(s) open")
            else:
                try:
                    rc = _tpm_raw(self.port, _tpm_cmd_no_auth(_TPM_CC_SHUTDOWN, struct.pack(">H", _TPM_SU_CLEAR)))
                    _log_marker(self.log_path, f"TPM2_Shutdown(CLEAR) rc=0x{rc:x}")
                except OSError as e:
                    _log_marker(self.log_path, f"TPM2_Shutdown(CLEAR) failed: {e}")
        _log_marker(self.log_path, f"stopping pid {proc.pid} (SIGTERM)")
        _terminate(proc)
        self._proc = None
        _unregister(self)

    def kill(self) -> None:
        """SIGKILL swtpm without TPM2_Shutdown (simulates a crash / power loss)."""
        proc = self._proc
        if proc is None:
            return
        if not _has_exited(proc):
            _log_marker(self.log_path, f"killing pid {proc.pid} (SIGKILL, no TPM2_Shutdown)")
        _terminate(proc, kill=True)
        self._proc = None
        _unregister(self)

    def _reap(self) -> None:
        if self._proc is not None:
            _terminate(self._proc)
            self._proc = None
            _unregister(self)

    # -- internals --------------------------------------------------------
    def _launch(self, binary: str, port: int) -> None:
        argv = [
            binary, "socket", "--tpm2",
            "--tpmstate", f"dir={self.state_dir}",
            "--server", f"type=tcp,port={port},bindaddr={_HOST}",
            "--ctrl", f"type=tcp,port={port + 1},bindaddr={_HOST}",
            "--flags", "not-need-init,startup-clear",
        ]
        self._proc = _spawn(argv, self.log_path, _child_env())
        _register(self)
        self.port, self.ctrl_port = port, port + 1
        try:
            self._wait_ready()
            self._init_dictionary_attack()
        except BaseException:
            self.kill()
            raise

    def _wait_ready(self) -> None:
        assert self._proc is not None and self.port is not None
        probe = _tpm_cmd_no_auth(_TPM_CC_GET_RANDOM, struct.pack(">H", 8))
        deadline = time.monotonic() + START_TIMEOUT
        last = "no answer"
        for _ in range(int(START_TIMEOUT / _POLL_INTERVAL) + 1):
            if _has_exited(self._proc):
                self._proc.wait()
                tail = " ".join(_tail(self.log_path, 3))
                if "Address already in use" in tail:
                    raise _PortInUse(f"swtpm could not bind port {self.port}/{self.port + 1}: {tail}")
                raise _fail("swtpm exited during startup", self.log_path, f"exit code {self._proc.returncode}")
            try:
                rc = _tpm_raw(self.port, probe, timeout=1.0)
                if rc == 0:
                    return
                last = f"TPM2_GetRandom rc=0x{rc:x}"
                if rc not in (_TPM_RC_INITIALIZE, _TPM_RC_RETRY, _TPM_RC_YIELDED, _TPM_RC_TESTING):
                    raise _fail("swtpm answers with an error", self.log_path, last)
            except OSError as e:
                last = str(e)
            if time.monotonic() >= deadline:
                break
            time.sleep(_POLL_INTERVAL)
        raise _fail(f"swtpm did not answer within {START_TIMEOUT:.0f}s", self.log_path, last)

    def _init_dictionary_attack(self) -> None:
        assert self.port is not None
        params = struct.pack(">III", self.DA_MAX_TRIES, self.DA_RECOVERY_TIME, self.DA_LOCKOUT_RECOVERY)
        for name, cmd in (
            ("TPM2_DictionaryAttackLockReset", _tpm_cmd_lockout_pw(_TPM_CC_DA_LOCK_RESET, b"")),
            ("TPM2_DictionaryAttackParameters", _tpm_cmd_lockout_pw(_TPM_CC_DA_PARAMETERS, params)),
        ):
            try:
                rc = _tpm_raw(self.port, cmd)
            except OSError as e:
                raise _fail(f"swtpm: {name} failed", self.log_path, str(e)) from None
            if rc != 0:
                raise _fail(f"swtpm: {name} failed", self.log_path, f"rc=0x{rc:x}")

    def __repr__(self) -> str:
        return f"<SwTpm port={self.port} pid={self.pid} state_dir={self.state_dir}>"


class _PortInUse(RuntimeError):
    """swtpm could not bind its ports (raced with another process)."""


# --------------------------------------------------------------------------
# private D-Bus session bus
# --------------------------------------------------------------------------


class DBusSession(_Component):
    """A private ``dbus-daemon --session`` (``--nofork``, so we own its PID).

    Its socket lives in the work directory when the path is short enough for a
    unix socket, so nothing is left in /tmp even after SIGKILL."""

    def __init__(self, workdir: str | os.PathLike[str] | None = None) -> None:
        """Prepare (not start) a bus; *workdir* defaults to a new temp dir."""
        self.workdir, self._owns_workdir = _make_workdir(workdir, "tpmtls-dbus-")
        self.log_path: Path = self.workdir / "dbus-daemon.log"
        self.address: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "DBusSession":
        """Start the daemon and read its address from stdout (bounded wait)."""
        if self._proc is not None:
            if self.running:
                return self
            self.stop()
        binary = _find_binary("dbus-daemon")
        argv = [binary, "--session", "--nofork", "--nopidfile", "--nosyslog", "--print-address=1"]
        sockdir = str(self.workdir.resolve())
        if len(sockdir) <= 80:  # sun_path holds 108 bytes, and dbus adds "/dbus-" plus a 10-character random name
            argv.append(f"--address=unix:dir={sockdir}")
        self._proc = _spawn(argv, self.log_path, _child_env(), stdout=subprocess.PIPE)
        _register(self)
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
                    raise _fail(f"dbus-daemon printed no address within {START_TIMEOUT:.0f}s", self.log_path)
                if not sel.select(timeout=min(remaining, 0.5)):
                    continue
                chunk = os.read(fd, 4096)
                if not chunk:
                    _wait_exited(self._proc, STOP_TIMEOUT)
                    raise _fail("dbus-daemon closed stdout without printing an address", self.log_path,
                                f"exit code {self._proc.poll()}")
                buf += chunk
        address = buf.split(b"\n", 1)[0].decode().strip()
        if not address:
            raise _fail("dbus-daemon printed an empty address", self.log_path)
        return address

    def stop(self) -> None:
        """Stop the daemon by PID (SIGTERM, bounded wait, SIGKILL) and reap it.  Idempotent."""
        proc = self._proc
        if proc is None:
            return
        _terminate(proc)
        if proc.stdout is not None:
            proc.stdout.close()
        self._proc = None
        self.address = None
        _unregister(self)

    def __repr__(self) -> str:
        return f"<DBusSession pid={self.pid} address={self.address}>"


# --------------------------------------------------------------------------
# tpm2-abrmd
# --------------------------------------------------------------------------

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


class Abrmd(_Component):
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
        self.workdir, self._owns_workdir = _make_workdir(workdir, "tpmtls-abrmd-")
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
        binary = _find_binary("tpm2-abrmd")
        argv = [binary, "--session", f"--dbus-name={self.name}", "--flush-all", f"--tcti={self.backend_tcti}"]
        if os.geteuid() == 0:
            argv.append("--allow-root")
        env = _child_env({"DBUS_SESSION_BUS_ADDRESS": self.bus.address})
        self._proc = _spawn(argv, self.log_path, env)
        _register(self)
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
            if _has_exited(self._proc):
                self._proc.wait()
                raise _fail("tpm2-abrmd exited during startup", self.log_path,
                            f"exit code {self._proc.returncode}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if use_pytss:
                argv = [sys.executable, "-c", _PROBE_SCRIPT, self.tcti]
            else:
                argv = [_find_binary("tpm2_getrandom"), "4", "-T", self.tcti]
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
            time.sleep(_POLL_INTERVAL)
        raise _fail(f"tpm2-abrmd not usable within {START_TIMEOUT:.0f}s", self.log_path, last)

    def stop(self) -> None:
        """Stop tpm2-abrmd by PID (SIGTERM, bounded wait, SIGKILL) and reap it.  Idempotent."""
        self._reap()

    def kill(self) -> None:
        """SIGKILL tpm2-abrmd (simulates a crash); its clients get transport errors."""
        proc = self._proc
        if proc is None:
            return
        _terminate(proc, kill=True)
        self._proc = None
        _unregister(self)

    def restart(self) -> None:
        """Stop (if running) and start again with the same D-Bus name and backend;
        clients must open new TCTI/ESAPI contexts afterwards."""
        self.stop()
        self.start()

    def _reap(self) -> None:
        proc = self._proc
        if proc is None:
            return
        _terminate(proc)
        self._proc = None
        _unregister(self)

    def __repr__(self) -> str:
        return f"<Abrmd name={self.name} pid={self.pid} backend={self.backend_tcti}>"


# --------------------------------------------------------------------------
# The one private session bus of this process
# --------------------------------------------------------------------------
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

# --------------------------------------------------------------------------
# Everything together
# --------------------------------------------------------------------------



class TestTpm(_Component):
    """swtpm + tpm2-abrmd in a temp dir, on this process' private bus: what tests need.

    In-process clients use ``tcti`` (``start()`` makes sure the shared private bus
    runs and ``DBUS_SESSION_BUS_ADDRESS`` points at it); subprocesses need
    ``env={**os.environ, **t.env}``. Several may run at once in one process.
    """

    __test__ = False  # not a pytest test class despite its name

    def __init__(self, workdir: str | os.PathLike[str] | None = None, *, timing: TpmTiming | None = None) -> None:
        """Prepare (not start) the stack; *workdir* defaults to a new temp dir.

        *timing*: give the TPM a hardware TPM's pace (e.g. ``TpmTiming.with_sign(50)``):
        a forwarder between abrmd and swtpm holds each response for the command's
        modelled duration (see :mod:`tpmtls._latency`); ``latency.counts`` then tells
        how many of each TPM command ran.
        """
        self.workdir, self._owns_workdir = _make_workdir(workdir, "tpmtls-")
        self.swtpm = SwTpm(self.workdir / "swtpm")
        self.timing = timing
        self.latency: LatencyForwarder | None = None
        self.bus: DBusSession | None = None
        self._abrmd: Abrmd | None = None
        self._started = False

    # -- info -------------------------------------------------------------
    @property
    def abrmd(self) -> Abrmd:
        """The tpm2-abrmd component (exists once start() was called)."""
        if self._abrmd is None:
            raise RuntimeError("TestTpm has not been started yet")
        return self._abrmd

    @property
    def tcti(self) -> str:
        """TCTI for clients (through abrmd; many may be open at once)."""
        return self.abrmd.tcti

    @property
    def direct_tcti(self) -> str:
        """TCTI straight to swtpm (through the latency forwarder if any), bypassing abrmd."""
        if self.latency is not None:
            return f"swtpm:host={_HOST},port={self.latency.port}"
        return self.swtpm.tcti

    @property
    def env(self) -> dict[str, str]:
        """Environment additions a subprocess needs to use this TPM."""
        if self.bus is None or self.bus.address is None:
            raise RuntimeError("TestTpm is not running")
        return {
            "DBUS_SESSION_BUS_ADDRESS": self.bus.address,
            "TPM2TOOLS_TCTI": self.tcti,
            "TPMTLS_TCTI": self.tcti,
            "TPM2OPENSSL_TCTI": self.tcti,
        }

    def logs(self) -> str:
        """Tail of each component's log, for failure messages."""
        parts = []
        for label, path in (
            ("swtpm", self.swtpm.log_path),
            ("dbus-daemon", self.bus.log_path if self.bus else None),
            ("tpm2-abrmd", self._abrmd.log_path if self._abrmd else None),
        ):
            if path is None:
                continue
            body = "\n".join(_tail(path, 20)) or "<empty>"
            parts.append(f"== {label} ({path}) ==\n{body}")
        return "\n".join(parts)

    # -- lifecycle --------------------------------------------------------
    def start(self) -> "TestTpm":
        """Start swtpm and an abrmd for it on the shared private bus (cleaning up on failure)."""
        if self._started:
            return self
        try:
            self.swtpm.start()
            if self.timing is not None:
                assert self.swtpm.port is not None
                self.latency = LatencyForwarder(self.swtpm.port, free_port(2), self.timing).start()
            self.bus = shared_bus()
            self._abrmd = Abrmd(self.direct_tcti, self.bus, self.workdir / "abrmd")
            self._abrmd.start()
        except BaseException:
            self._stop_components()
            raise
        self._started = True
        _register(self)
        return self

    def _stop_components(self) -> None:
        errors: list[BaseException] = []
        steps: list[Callable[[], None]] = []
        if self._abrmd is not None:
            steps.append(self._abrmd.stop)
        steps.append(lambda: self.swtpm.stop(clean=True))
        if self.latency is not None:
            steps.append(self.latency.stop)
        for step in steps:
            try:
                step()
            except BaseException as e:  # keep stopping the rest
                errors.append(e)
        if errors:
            raise errors[0]

    def stop(self) -> None:
        """Stop abrmd, then swtpm (clean TPM2_Shutdown). The shared bus stays. Idempotent."""
        try:
            self._stop_components()
        finally:
            self._started = False
            _unregister(self)

    def __repr__(self) -> str:
        return f"<TestTpm workdir={self.workdir} swtpm={self.swtpm!r} abrmd={self._abrmd!r}>"


# --------------------------------------------------------------------------
# A registry that requires client certificates, and images to push to it
# --------------------------------------------------------------------------


class Registry(_Component):
    """`docker-registry serve` (distribution) on 127.0.0.1 with TLS.

    With `client_ca` it requires client certificates signed by it (mTLS). `htpasswd`
    adds Basic auth; `token` (a dict with realm, service, issuer, rootcertbundle) adds
    Bearer token auth.
    """

    def __init__(self, cert: str | os.PathLike[str], key: str | os.PathLike[str],
                 client_ca: str | os.PathLike[str] | None = None, workdir: str | os.PathLike[str] | None = None,
                 *, htpasswd: str | os.PathLike[str] | None = None, token: dict[str, str] | None = None) -> None:
        self.workdir, self._owns_workdir = _make_workdir(workdir, "tpmtls-registry-")
        self.cert, self.key, self.client_ca = Path(cert), Path(key), client_ca
        self.htpasswd, self.token = htpasswd, token
        self.port: int | None = None
        self.log_path = self.workdir / "registry.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "Registry":
        if self._proc is not None:
            return self
        binary = _find_binary("docker-registry")
        self.port = free_port()
        lines = [
            "version: 0.1",
            "log:", "  level: warn", "  accesslog:", "    disabled: true",
            "storage:", "  filesystem:", f"    rootdirectory: {self.workdir / 'data'}", "  delete:", "    enabled: true",
            "http:", f"  addr: 127.0.0.1:{self.port}", "  tls:", f"    certificate: {self.cert}", f"    key: {self.key}",
        ]
        if self.client_ca:
            lines += ["    clientcas:", f"      - {self.client_ca}"]
        if self.htpasswd:
            lines += ["auth:", "  htpasswd:", "    realm: tpmtls-test", f"    path: {self.htpasswd}"]
        elif self.token:
            lines += ["auth:", "  token:"] + [f"    {k}: {v}" for k, v in self.token.items()]
        config = self.workdir / "config.yml"
        config.write_text("\n".join(lines) + "\n")
        self._proc = _spawn([binary, "serve", str(config)], self.log_path, _child_env())
        _register(self)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._reap()
                raise _fail("docker-registry exited at start", self.log_path)
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise _fail("docker-registry did not listen in time", self.log_path)

    def _reap(self) -> None:
        if self._proc is not None:
            _terminate(self._proc)
            self._proc = None
            _unregister(self)

    def stop(self) -> None:
        self._reap()


def build_docker_archive(path: str | os.PathLike[str], layers: list[dict[str, bytes | int]],
                         repo_tag: str = "demo:1") -> Path:
    """Write a `docker save`-format tar (plain layer tars) that `docker load` accepts.

    Each layer maps file names to content: bytes, or an int = that many random bytes
    (streamed, so a 200 MB layer costs no memory). Deterministic except random content.
    """
    import hashlib
    import io
    import json
    import tarfile

    out = Path(path)
    work = Path(tempfile.mkdtemp(prefix="tpmtls-image-", dir=out.parent))
    try:
        diff_ids, layer_names = [], []
        for i, files in enumerate(layers):
            layer_tar = work / f"layer{i}.tar"
            with tarfile.open(layer_tar, "w", format=tarfile.PAX_FORMAT) as tar:
                for name, content in files.items():
                    info = tarfile.TarInfo(name)
                    info.mtime, info.mode, info.uid, info.gid = 0, 0o755, 0, 0
                    if isinstance(content, int):
                        info.size = content
                        tar.addfile(info, _RandomReader(content))
                    else:
                        info.size = len(content)
                        tar.addfile(info, io.BytesIO(content))
            h = hashlib.sha256()
            with open(layer_tar, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            diff_ids.append("sha256:" + h.hexdigest())
            layer_names.append(f"{h.hexdigest()}/layer.tar")
        config = json.dumps({
            "architecture": "amd64", "os": "linux",
            "config": {"Cmd": ["/hello"], "Env": ["PATH=/"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created_by": f"tpmtls.testing layer {i}"} for i in range(len(layers))],
        }, sort_keys=True).encode()
        config_name = hashlib.sha256(config).hexdigest() + ".json"
        manifest = json.dumps([{"Config": config_name, "RepoTags": [repo_tag], "Layers": layer_names}]).encode()
        with tarfile.open(out, "w") as tar:
            for name, data in ((config_name, config), ("manifest.json", manifest)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            for i, name in enumerate(layer_names):
                tar.add(work / f"layer{i}.tar", arcname=name)
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


class _RandomReader:
    """A file-like object giving `size` random bytes, made 1 MiB at a time."""

    def __init__(self, size: int) -> None:
        self.left = size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return os.urandom(n)


class Dockerd(_Component):
    """A private `dockerd` (Debian's docker.io) on a unix socket in a temp dir.

    vfs storage, no iptables or bridge: images can be imported, saved, loaded, tagged,
    pushed and pulled; containers are not run (FINDINGS). Clients use `host`/`env`.
    """

    def __init__(self, workdir: str | os.PathLike[str] | None = None) -> None:
        self.workdir, self._owns_workdir = _make_workdir(workdir, "tpmtls-dockerd-")
        # unix socket paths are limited to 108 bytes: keep the runtime dirs short
        self._run = Path(tempfile.mkdtemp(prefix="tpd-", dir="/tmp"))
        self.socket = self._run / "docker.sock"
        self.log_path = self.workdir / "dockerd.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def env(self) -> dict[str, str]:
        return {"DOCKER_HOST": self.host}

    def start(self) -> "Dockerd":
        if self._proc is not None:
            return self
        binary = _find_binary("dockerd")
        args = [binary, "--iptables=false", "--ip6tables=false", "--bridge=none", "--storage-driver=vfs",
                "--data-root", str(self.workdir / "data"), "--exec-root", str(self._run / "exec"),
                "--pidfile", str(self._run / "docker.pid"), "-H", self.host]
        self._proc = _spawn(args, self.log_path, _child_env())
        _register(self)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self.stop()  # also removes the runtime dir: __exit__ never runs for a failed start
                raise _fail("dockerd exited at start (it needs cgroups and a real root mount)", self.log_path)
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(2)
                    s.connect(str(self.socket))
                    s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
                    if b"OK" in s.recv(1024):
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise _fail("dockerd did not answer /_ping within 60 s", self.log_path)

    def _reap(self) -> None:
        if self._proc is not None:
            _terminate(self._proc, timeout=20)
            self._proc = None
            _unregister(self)

    def stop(self) -> None:
        self._reap()
        shutil.rmtree(self._run, ignore_errors=True)
