"""NGINX as the mTLS terminator in front of docker-registry (as an Envoy front is usually deployed).

NGINX verifies the client certificate and judges it *after* the handshake (HTTP 400 "No
required SSL certificate was sent" / "The SSL certificate error"); the registry behind it
is a plain-TLS docker-registry. Started on a free loopback port, stopped by PID."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from support.peers import clean_env
from tpmtls.testing import free_port


class Nginx:
    def __init__(self, workdir: Path, cert: Path, key: Path, client_ca: Path, upstream_port: int,
                 protocols: str = "TLSv1.2 TLSv1.3") -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        temps = "\n".join(f"  {kind}_temp_path {workdir / kind};" for kind in
                          ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (workdir / "nginx.conf").write_text(f"""
user root;
worker_processes 1;
daemon off;
pid {workdir / 'nginx.pid'};
error_log {workdir / 'error.log'} warn;
events {{ worker_connections 256; }}
http {{
  access_log off;
{temps}
  server {{
    listen 127.0.0.1:{self.port} ssl;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_client_certificate {client_ca};
    ssl_verify_client on;
    ssl_protocols {protocols};
    client_max_body_size 0;
    chunked_transfer_encoding on;
    location / {{
      proxy_pass https://127.0.0.1:{upstream_port};
      proxy_http_version 1.1;
      proxy_request_buffering off;
      proxy_buffering off;
      proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-Proto https;
      proxy_read_timeout 600;
    }}
  }}
}}
""")
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self.proc = subprocess.Popen([binary, "-p", str(workdir), "-c", str(workdir / "nginx.conf"), "-e",
                                      str(workdir / "error.log")], stdout=subprocess.DEVNULL,
                                     stderr=open(workdir / "stderr.log", "wb"), env=clean_env(),
                                     start_new_session=True)
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {(workdir / 'stderr.log').read_text()[-500:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("nginx did not listen within 20 s") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: the master stops its worker
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self) -> "Nginx":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
