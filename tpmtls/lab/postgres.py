"""A PostgreSQL server of our own: `initdb` in a temp dir, `postgres` on a unix socket there, stopped by PID.

PostgreSQL refuses to run as root, so under root the cluster belongs to the `postgres` user
(Debian's package makes it) or `nobody`, and only its own directory is handed over. No TCP
port: clients reach it through the socket directory (`postgresql://tpmtls@/tpmtls?host=DIR`),
so nothing listens on the network and nothing collides with another test run.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from .process import (
    START_TIMEOUT,
    Component,
    child_env,
    fail,
    has_exited,
    register,
    spawn,
    terminate,
    unregister,
    wait_exited,
)

PORT = 5432  # only names the socket file (.s.PGSQL.5432) inside our own directory


def pg_binary(name: str) -> str:
    """`initdb`/`postgres`/`pg_isready` from PATH or Debian's /usr/lib/postgresql/<version>/bin (newest)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if candidates:
        return candidates[-1]
    raise FileNotFoundError(f"{name} not found; install the Debian package postgresql")


def _run_as() -> tuple[str | None, int, int]:
    """(user name, uid, gid) to run the server as: ourselves, or under root an unprivileged account."""
    if os.geteuid() != 0:
        return None, os.getuid(), os.getgid()
    for name in ("postgres", "nobody"):
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        return name, pw.pw_uid, pw.pw_gid
    raise RuntimeError("PostgreSQL cannot run as root and there is no 'postgres' or 'nobody' account")


class Postgres(Component):
    """`postgres` on a unix socket in a fresh cluster; `url` is the database to use."""

    def __init__(self, *, durable: bool = True, database: str = "tpmtls") -> None:
        # Not under pytest's tmp_path: its parents are 0700 root, and the server runs as another user.
        self.workdir = Path(tempfile.mkdtemp(prefix="tpmtls-pg-"))
        self._owns_workdir = True
        self.durable = durable
        self.database = database
        self.log_path = self.workdir / "postgres.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self.user, self._uid, self._gid = _run_as()

    @property
    def socket_dir(self) -> Path:
        return self.workdir

    @property
    def url(self) -> str:
        return f"postgresql://tpmtls@/{self.database}?host={self.socket_dir}&port={PORT}"

    def _as_owner(self) -> dict[str, Any]:
        return {"user": self._uid, "group": self._gid, "extra_groups": []} if self.user else {}

    def start(self) -> "Postgres":
        """initdb (first start only), then the server; a start after `stop` serves the same cluster again."""
        if self._proc is not None:
            return self
        data = self.workdir / "data"
        os.chown(self.workdir, self._uid, self._gid)
        env = child_env({"LC_ALL": "C"})
        if not data.exists():
            proc = subprocess.run([pg_binary("initdb"), "-D", str(data), "-U", "tpmtls", "--auth=trust", "-E", "UTF8",
                                   "--locale=C", "--no-sync"], capture_output=True, text=True, timeout=120, env=env,
                                  cwd=self.workdir, **self._as_owner())
            if proc.returncode != 0:
                raise RuntimeError(f"initdb failed: {(proc.stderr or proc.stdout).strip()[-500:]}")
        options = ["-c", "listen_addresses=", "-c", f"unix_socket_directories={self.socket_dir}", "-p", str(PORT),
                   "-c", "max_connections=200"]
        if not self.durable:
            options += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        self.log_path.touch()
        os.chown(self.log_path, self._uid, self._gid)
        self._proc = self._spawn([pg_binary("postgres"), "-D", str(data), *options], env)
        register(self)
        deadline = time.monotonic() + START_TIMEOUT * 3
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._reap()
                raise fail("postgres exited at start", self.log_path)
            ready = subprocess.run([pg_binary("pg_isready"), "-h", str(self.socket_dir), "-p", str(PORT), "-U", "tpmtls"],
                                   capture_output=True, timeout=10, env=env)
            if ready.returncode == 0:
                self._create_database(env)
                return self
            time.sleep(0.1)
        self.stop()
        raise fail("postgres did not accept connections in time", self.log_path)

    def _spawn(self, argv: list[str], env: dict[str, str]) -> "subprocess.Popen[bytes]":
        if not self.user:
            return spawn(argv, self.log_path, env)
        with open(self.log_path, "ab") as logf:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, env=env,
                                    start_new_session=True, close_fds=True, cwd=self.workdir, **self._as_owner())

    def _create_database(self, env: dict[str, str]) -> None:
        psql = pg_binary("psql")
        proc = subprocess.run([psql, "-h", str(self.socket_dir), "-p", str(PORT), "-U", "tpmtls", "-d", "postgres",
                               "-v", "ON_ERROR_STOP=1", "-c", f'CREATE DATABASE "{self.database}"'],
                              capture_output=True, text=True, timeout=60, env=env)
        if proc.returncode != 0 and "already exists" not in proc.stderr:
            raise RuntimeError(f"CREATE DATABASE failed: {proc.stderr.strip()[-300:]}")

    def _reap(self) -> None:
        if self._proc is not None:
            if not has_exited(self._proc):
                try:
                    os.kill(self._proc.pid, signal.SIGINT)  # "fast" shutdown: clients still connected are cut off
                except ProcessLookupError:
                    pass
                wait_exited(self._proc, 15)
            terminate(self._proc)
            self._proc = None
            unregister(self)

    def stop(self) -> None:
        self._reap()


__all__ = ["Postgres", "pg_binary"]
