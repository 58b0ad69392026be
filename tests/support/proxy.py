"""Test infrastructure for `tpmtls proxy`: the proxy as a process, a temporary /etc/hosts entry,
the stock docker CLI against a private dockerd, and a process's resident memory."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Iterator

from support.daemon import DOCKER
from support.processes import Supervised
from support.wait import wait_until
from tpmtls.lab.process import child_env

HOSTS = Path("/etc/hosts")
#: Go's resolver (dockerd) re-reads /etc/hosts at most every 5 s (net/hosts.go cacheMaxAge).
GO_HOSTS_CACHE = 5.0


@contextlib.contextmanager
def in_thread(proxy, join: float = 15) -> Iterator:
    """An in-process proxy (tpmtls's daemon or registry proxy) bound and serving on a thread of
    its own while the block runs; stopped, and its thread joined (bounded), after."""
    import threading

    proxy.bind()
    server = threading.Thread(target=proxy.serve, daemon=True)
    server.start()
    try:
        yield proxy
    finally:
        proxy.stop()
        server.join(join)


class RegistryProxyProcess(Supervised):
    """`python -m tpmtls proxy …` as a user runs it; ready once it logs 'listening on'."""

    name = "proxy"
    ready_line = "listening on http://"

    def __init__(self, workdir: Path, env: dict[str, str], *args: str) -> None:
        super().__init__([sys.executable, "-m", "tpmtls", "proxy", *args], workdir / f"proxy-{time.monotonic_ns()}.log",
                         env)
        self.address = self.text().split("listening on http://", 1)[1].split(",", 1)[0]

    def status(self) -> dict:
        with urllib.request.urlopen(f"http://{self.address}/_tpmtls/status", timeout=10) as r:  # noqa: S310
            return json.loads(r.read())


def docker(daemon_env: dict[str, str], *args: str, input: str | None = None, check: bool = True,
           timeout: float = 300, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The stock docker CLI (a private DOCKER_CONFIG if given)."""
    env = {**daemon_env, **({"DOCKER_CONFIG": str(config)} if config else {})}
    proc = subprocess.run([DOCKER, *args], env=child_env(env), input=input, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def unique_name(prefix: str = "reg") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}.tpmtls.test"


@contextlib.contextmanager
def hosts_entry(name: str, address: str, *, dockerd_env: dict[str, str] | None = None) -> Iterator[str]:
    """`address name` appended to /etc/hosts, removed again (only our line) whatever happens.

    Written in place: /etc/hosts is often a bind mount, where a rename fails. Names are
    unique per test, so a concurrent edit of other lines survives the removal. glibc (Python,
    the tpmtls commands) reads the file at every lookup; with `dockerd_env` this also waits
    until that dockerd resolves the name, since Go's resolver keeps its copy for up to 5 s.
    """
    line = f"{address} {name}  # tpmtls test {os.getpid()}\n"
    with open(HOSTS, "a") as f:
        f.write(line)
    try:
        if dockerd_env is not None:
            wait_until(lambda: dockerd_resolves(dockerd_env, name), 4 * GO_HOSTS_CACHE,
                       f"dockerd resolving {name} from {HOSTS}", interval=0.25)
        yield name
    finally:
        kept = [x for x in HOSTS.read_text().splitlines(keepends=True) if x != line]
        with open(HOSTS, "r+") as f:
            f.seek(0)
            f.write("".join(kept))
            f.truncate()


def dockerd_resolves(daemon_env: dict[str, str], name: str) -> bool:
    """Whether the daemon finds an address for `name`: a pull of an image that is nowhere fails
    either at the lookup ("dial tcp: lookup NAME … no such host") or after it (refused, 404 …)."""
    proc = docker(daemon_env, "pull", f"{name}/tpmtls-resolve-probe:0", check=False, timeout=60)
    return f"lookup {name}" not in proc.stderr


def rss_kib(pid: int) -> int:
    """Resident set size of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


class DockerSocketSpy:
    """A unix socket in front of a dockerd's: forwards both ways and records the request lines
    its clients send (`requests`), so a test can count `docker save` calls (`saves()`)."""

    def __init__(self, daemon_socket: str, path: Path) -> None:
        import re
        import socket
        import threading

        self.target, self.path = daemon_socket, path
        self.requests: list[str] = []
        self._line = re.compile(rb"(GET|HEAD|POST|PUT|DELETE) (/\S*) HTTP/1\.[01]\r\n")
        self._lock = threading.Lock()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def env(self) -> dict[str, str]:
        return {"DOCKER_HOST": f"unix://{self.path}"}

    def saves(self) -> int:
        """`docker save` requests seen (docker-py: GET /vX/images/NAME/get; the CLI: /images/get?names=)."""
        with self._lock:
            return sum(1 for r in self.requests if "/images/" in r and (r.split("?")[0].endswith("/get")))

    def _accept(self) -> None:
        import socket
        import threading

        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self.target)
            for src, dst, up in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(src, dst, up), daemon=True).start()

    def _pump(self, src, dst, up: bool) -> None:
        import socket

        seen = b""
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                if up:
                    seen = (seen + data)[-4096:]
                    for m in self._line.finditer(seen):
                        with self._lock:
                            self.requests.append(f"{m.group(1).decode()} {m.group(2).decode()}")
                    seen = seen[seen.rfind(b"\r\n") + 2:] if b"\r\n" in seen else seen
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            src.close()

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        self._thread.join(5)

    def __enter__(self) -> "DockerSocketSpy":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
