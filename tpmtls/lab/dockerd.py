"""A private `dockerd` on a unix socket in a temp dir: images in and out, small containers."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .process import Daemon, child_env, fail, find_binary, make_workdir, register, spawn


class Dockerd(Daemon):
    """A private `dockerd` (Debian's docker.io) on a unix socket in a temp dir.

    vfs storage, no iptables or bridge: images can be imported, saved, loaded, tagged,
    pushed and pulled; containers are not run (docs/facts-docker.md, "dockerd on this machine
    kind"). Clients use `host`/`env`.
    With `config_file` (a daemon.json whose "hosts" include ``unix://`` + `socket`, e.g. from
    `tpmtls certs daemon-config --socket`) it listens where that file says instead.
    """

    def __init__(self, workdir: str | os.PathLike[str] | None = None,
                 config_file: str | os.PathLike[str] | None = None) -> None:
        self.workdir, self._owns_workdir = make_workdir(workdir, "tpmtls-dockerd-")
        self.config_file = Path(config_file) if config_file is not None else None
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
        binary = find_binary("dockerd")
        args = [binary, "--iptables=false", "--ip6tables=false", "--bridge=none", "--storage-driver=vfs",
                "--data-root", str(self.workdir / "data"), "--exec-root", str(self._run / "exec"),
                "--pidfile", str(self._run / "docker.pid")]
        # dockerd refuses "hosts" given both in daemon.json and as -H
        args += ["--config-file", str(self.config_file)] if self.config_file else ["-H", self.host]
        self._proc = spawn(args, self.log_path, child_env())
        register(self)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self.stop()  # also removes the runtime dir: __exit__ never runs for a failed start
                raise fail("dockerd exited at start (it needs cgroups and a real root mount)", self.log_path)
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
        raise fail("dockerd did not answer /_ping within 60 s", self.log_path)
