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

from support.daemon import DOCKER, _Process
from support.peers import clean_env

HOSTS = Path("/etc/hosts")
#: Go's resolver (dockerd) re-reads /etc/hosts at most every 5 s (net/hosts.go cacheMaxAge).
GO_HOSTS_CACHE = 5.5


class RegistryProxyProcess(_Process):
    """`python -m tpmtls proxy …` as a user runs it; ready once it logs 'listening on'."""

    def __init__(self, workdir: Path, env: dict[str, str], *args: str) -> None:
        self.log = workdir / f"proxy-{time.monotonic_ns()}.log"
        self._spawn([sys.executable, "-m", "tpmtls", "proxy", *args], env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc is not None
            text = self.log.read_text(errors="replace")
            if "listening on http://" in text:
                self.address = text.split("listening on http://", 1)[1].split(",", 1)[0]
                return
            if self.proc.poll() is not None:
                raise self._failed(f"proxy exited {self.proc.returncode}")
            time.sleep(0.05)
        raise self._failed("proxy did not start listening within 60 s")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()

    def status(self) -> dict:
        with urllib.request.urlopen(f"http://{self.address}/_tpmtls/status", timeout=10) as r:  # noqa: S310
            return json.loads(r.read())


def docker(daemon_env: dict[str, str], *args: str, input: str | None = None, check: bool = True,
           timeout: float = 300, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The stock docker CLI (a private DOCKER_CONFIG if given)."""
    env = {**daemon_env, **({"DOCKER_CONFIG": str(config)} if config else {})}
    proc = subprocess.run([DOCKER, *args], env=clean_env(env), input=input, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def unique_name(prefix: str = "reg") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}.tpmtls.test"


@contextlib.contextmanager
def hosts_entry(name: str, address: str) -> Iterator[str]:
    """`address name` appended to /etc/hosts, removed again (only our line) whatever happens.

    Written in place: /etc/hosts is often a bind mount, where a rename fails. Names are
    unique per test, so a concurrent edit of other lines survives the removal.
    """
    line = f"{address} {name}  # tpmtls test {os.getpid()}\n"
    with open(HOSTS, "a") as f:
        f.write(line)
    try:
        time.sleep(GO_HOSTS_CACHE)
        yield name
    finally:
        kept = [x for x in HOSTS.read_text().splitlines(keepends=True) if x != line]
        with open(HOSTS, "r+") as f:
            f.seek(0)
            f.write("".join(kept))
            f.truncate()


def rss_kib(pid: int) -> int:
    """Resident set size of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")
