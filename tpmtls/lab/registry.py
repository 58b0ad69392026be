"""A `docker-registry` (distribution) on loopback with TLS, client certificates and optional auth."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from .ports import free_port
from .process import (
    START_TIMEOUT,
    Component,
    child_env,
    fail,
    find_binary,
    make_workdir,
    register,
    spawn,
    terminate,
    unregister,
)


class Registry(Component):
    """`docker-registry serve` (distribution) on 127.0.0.1 with TLS.

    With `client_ca` it requires client certificates signed by it (mTLS). `htpasswd`
    adds Basic auth; `token` (a dict with realm, service, issuer, rootcertbundle) adds
    Bearer token auth.
    """

    def __init__(self, cert: str | os.PathLike[str], key: str | os.PathLike[str],
                 client_ca: str | os.PathLike[str] | None = None, workdir: str | os.PathLike[str] | None = None,
                 *, htpasswd: str | os.PathLike[str] | None = None, token: dict[str, str] | None = None) -> None:
        self.workdir, self._owns_workdir = make_workdir(workdir, "tpmtls-registry-")
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
        binary = find_binary("docker-registry")
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
        self._proc = spawn([binary, "serve", str(config)], self.log_path, child_env())
        register(self)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._reap()
                raise fail("docker-registry exited at start", self.log_path)
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise fail("docker-registry did not listen in time", self.log_path)

    def _reap(self) -> None:
        if self._proc is not None:
            terminate(self._proc)
            self._proc = None
            unregister(self)

    def stop(self) -> None:
        self._reap()
