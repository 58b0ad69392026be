"""Helpers for the enroll-server tests: the server as its own process, raw JWS requests, odd clients."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import josepy as jose
import requests
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from requests.adapters import HTTPAdapter


class ServerProcess:
    """`tpmtls enroll-server …` as a user runs it; its URL read from its first stdout line; stopped by PID."""

    def __init__(self, env: dict[str, str], cwd: Path, *args: str, listen: str = "127.0.0.1:0",
                 prefix: tuple[str, ...] = (), log_name: str = "enroll-server.log") -> None:
        self.log = cwd / log_name
        self.proc = subprocess.Popen([*prefix, sys.executable, "-m", "tpmtls", "enroll-server", *args, "--listen", listen],
                                     cwd=cwd, env={**os.environ, **env}, stdout=subprocess.PIPE,
                                     stderr=open(self.log, "ab"), text=True, start_new_session=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # bounded: the process prints it or exits
        m = re.search(r"ACME directory (https://\S+/acme/directory);", line)
        if m is None:
            self.stop()
            raise AssertionError(f"enroll-server did not start: {line!r} {self.log.read_text()}")
        self.directory = m.group(1)
        self.url = self.directory[: -len("/acme/directory")]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


class SourceAddress(HTTPAdapter):
    """Connections from another loopback address (127.0.0.2 …): a second client as the server counts them."""

    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


def session_from(address: str, verify: str) -> requests.Session:
    s = requests.Session()
    s.mount("https://", SourceAddress(address))
    s.verify = verify
    return s


def es256_jws(key: ec.EllipticCurvePrivateKey, protected: dict[str, Any], payload: dict[str, Any] | None,
              unprotected: dict[str, Any] | None = None) -> bytes:
    """A flattened JWS built by hand, so a test can put header fields where a client must not."""
    prot = jose.b64encode(json.dumps(protected).encode()).decode()
    body = jose.b64encode(json.dumps(payload).encode()).decode() if payload is not None else ""
    der = key.sign(f"{prot}.{body}".encode(), ec.ECDSA(hashes.SHA256()))
    r, s = utils.decode_dss_signature(der)
    doc: dict[str, Any] = {"protected": prot, "payload": body,
                           "signature": jose.b64encode(r.to_bytes(32, "big") + s.to_bytes(32, "big")).decode()}
    if unprotected is not None:
        doc["header"] = unprotected
    return json.dumps(doc).encode()


def public_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    return jose.JWKEC(key=key.public_key()).to_partial_json()


def kill(proc: ServerProcess) -> None:
    """A crash, not a shutdown: SIGKILL."""
    proc.stop(signal.SIGKILL)


class RoundRobinNginx:
    """NGINX as the load balancer in front of several enroll-servers: each request to the next one (no upstream
    keep-alive, no retry on the other), TLS verified both ways; the access log names the upstream per request."""

    def __init__(self, workdir: Path, port: int, upstreams: list[int], cert: Path, key: Path, ca: Path,
                 name: str = "localhost") -> None:
        import shutil
        import socket
        import time

        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir, self.port = workdir, port
        self.access_log = workdir / "access.log"
        temps = "\n".join(f"  {kind}_temp_path {workdir / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi",
                                                                                "scgi"))
        servers = "\n".join(f"    server 127.0.0.1:{p};" for p in upstreams)
        (workdir / "nginx.conf").write_text(f"""
user root;
worker_processes 1;
daemon off;
pid {workdir / 'nginx.pid'};
error_log {workdir / 'error.log'} warn;
events {{ worker_connections 256; }}
http {{
  log_format lb '$request_method $uri $upstream_addr $status';
  access_log {self.access_log} lb;
{temps}
  upstream enroll {{
{servers}
  }}
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    location / {{
      proxy_pass https://enroll;
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate {ca};
      proxy_ssl_name {name};
      proxy_ssl_server_name on;
      proxy_set_header Host $http_host;
      proxy_next_upstream off;
    }}
  }}
}}
""")
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        env = {k: v for k, v in os.environ.items() if k != "OPENSSL_CONF"}
        self.proc = subprocess.Popen([binary, "-p", str(workdir), "-c", str(workdir / "nginx.conf"), "-e",
                                      str(workdir / "error.log")], stdout=subprocess.DEVNULL,
                                     stderr=open(workdir / "stderr.log", "wb"), env=env, start_new_session=True)
        for _ in range(400):  # 20 s at most
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {(workdir / 'stderr.log').read_text()[-500:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("nginx did not listen within 20 s")

    def requests(self) -> list[tuple[str, str, str, str]]:
        """(method, path, upstream, status) per request, in order."""
        return [tuple(line.split()[:4]) for line in self.access_log.read_text().splitlines() if line.strip()]  # type: ignore[misc]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
