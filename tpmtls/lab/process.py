"""Child processes of the lab: started in their own session, logged to a file, stopped by PID.

Every component (swtpm, dbus-daemon, tpm2-abrmd, docker-registry, dockerd) is started
with ``start_new_session=True``, logs to a file in its work directory, is stopped by
PID (SIGTERM, bounded wait, SIGKILL) and reaped, so no zombie or orphan remains; an
``atexit`` hook stops whatever is still running when the interpreter exits normally.
``OPENSSL_CONF`` from ``os.environ`` is never passed to the children (a provider
configuration inherited by swtpm killed it).
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, TypeVar

#: Bounded wait for any component to come up.
START_TIMEOUT = 10.0
#: Bounded wait for a process to exit after SIGTERM before SIGKILL.
STOP_TIMEOUT = 5.0
POLL_INTERVAL = 0.05


_registry_lock = threading.Lock()
# Objects with a ``_atexit_stop()`` method, in start order.
_live: list[Any] = []
# Temporary work directories we created and still have to delete.
_temp_dirs: set[str] = set()
# Ports handed out by free_port() in this process (avoid double hand-outs).
_reserved_ports: set[int] = set()


def register(obj: Any) -> None:
    with _registry_lock:
        if not any(o is obj for o in _live):
            _live.append(obj)


def unregister(obj: Any) -> None:
    with _registry_lock:
        _live[:] = [o for o in _live if o is not obj]


def _atexit_cleanup() -> None:
    """Stop everything still running (last started first) and drop temp dirs."""
    with _registry_lock:
        objs = list(reversed(_live))
    for obj in objs:
        try:
            obj._atexit_stop()
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass
    with _registry_lock:
        dirs = list(_temp_dirs)
        _temp_dirs.clear()
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


atexit.register(_atexit_cleanup)


def make_workdir(workdir: str | os.PathLike[str] | None, prefix: str) -> tuple[Path, bool]:
    """Return (directory, owned): a created temp dir if *workdir* is None."""
    if workdir is None:
        path = Path(tempfile.mkdtemp(prefix=prefix))
        with _registry_lock:
            _temp_dirs.add(str(path))
        return path, True
    path = Path(workdir)
    path.mkdir(parents=True, exist_ok=True)
    return path, False


def remove_workdir(path: Path) -> None:
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


def find_binary(name: str) -> str:
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


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """os.environ for a child: without OPENSSL_CONF, plus *extra*."""
    env = dict(os.environ)
    env.pop("OPENSSL_CONF", None)
    if extra:
        env.update(extra)
    return env


def log_marker(log_path: Path, text: str) -> None:
    """Append a harness line to a component log (to tell restarts apart)."""
    try:
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(f"--- tpmtls.lab {time.strftime('%H:%M:%S')}: {text}\n")
    except OSError:
        pass


def spawn(
    argv: list[str],
    log_path: Path,
    env: dict[str, str],
    stdout: int | None = None,
) -> subprocess.Popen[bytes]:
    """Start *argv* in its own session, stderr (and stdout unless given) to *log_path*."""
    log_marker(log_path, "exec " + " ".join(argv))
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


def has_exited(proc: subprocess.Popen[bytes]) -> bool:
    """True if *proc* has exited, WITHOUT reaping it (its PID stays reserved)."""
    if proc.returncode is not None:
        return True
    try:
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # already reaped elsewhere
        return True
    return info is not None


def wait_exited(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait (bounded) until *proc* exits, without reaping it."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.01) + 2):
        if has_exited(proc):
            return True
        if time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    return has_exited(proc)


def terminate(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT, kill: bool = False) -> None:
    """Stop *proc* by PID (SIGTERM, bounded wait, SIGKILL), kill stragglers of its
    session while the PID is still held by the zombie leader, then reap it."""
    if proc.returncode is None:
        if not has_exited(proc):
            try:
                os.kill(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
            except ProcessLookupError:
                pass
            if not kill and not wait_exited(proc, timeout):
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            wait_exited(proc, timeout)
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


def stop_each(steps: list[Callable[[], None]]) -> None:
    """Run every stop step in order, even when one fails; then raise the first failure."""
    errors: list[BaseException] = []
    for step in steps:
        try:
            step()
        except BaseException as e:  # noqa: BLE001 - keep stopping the rest
            errors.append(e)
    if errors:
        raise errors[0]


def tail(path: Path | None, lines: int = 15) -> list[str]:
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


def fail(what: str, log_path: Path | None, extra: str = "") -> RuntimeError:
    """One-line RuntimeError: what failed + last log lines."""
    last = " | ".join(tail(log_path, 8))
    msg = what
    if extra:
        msg += f" ({extra})"
    msg += f"; log {log_path}: {last or '<empty>'}"
    return RuntimeError(msg.replace("\n", " "))


_C = TypeVar("_C", bound="Component")


class Component(ABC):
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
        return self._proc is not None and not has_exited(self._proc)

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
                remove_workdir(self.workdir)


class Daemon(Component):
    """A daemon whose sockets live in a short runtime directory of its own (`_run`, in /tmp: unix
    socket paths are limited to 108 bytes); stopped by PID, the directory removed with it."""

    _run: Path

    def _reap(self) -> None:
        if self._proc is not None:
            terminate(self._proc, timeout=20)
            self._proc = None
            unregister(self)

    def stop(self) -> None:
        self._reap()
        shutil.rmtree(self._run, ignore_errors=True)
