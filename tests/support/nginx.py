"""NGINX as the suite runs it: in the foreground with a config of the test's, on a loopback port.

Two configurations: the mTLS terminator in front of docker-registry (where
Envoy is often deployed), rendered here by `registry_front`, and the one `tpmtls certs nginx-front` writes for a
dockerd socket. In both NGINX verifies the client certificate and judges it *after* the
handshake (HTTP 400 "No required SSL certificate was sent" / "The SSL certificate error").
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from support.processes import Supervised
from tpmtls.testing import free_port


class Nginx(Supervised):
    """`nginx -c conf` in the foreground, prefix and pid file in `workdir`; ready once `port` accepts."""

    name = "nginx"
    start_timeout = 20.0

    def __init__(self, workdir: Path, conf: Path, port: int) -> None:
        self.port = port
        (workdir / "logs").mkdir(parents=True, exist_ok=True)
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        super().__init__([binary, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log"),
                          "-g", f"daemon off; pid {workdir}/nginx.pid; error_log {workdir}/error.log info;"],
                         workdir / "nginx.log")

    def ready(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False


def registry_front(workdir: Path, cert: Path, key: Path, client_ca: Path, upstream_port: int,
                   protocols: str = "TLSv1.2 TLSv1.3") -> Nginx:
    """NGINX requiring client certificates from `client_ca`, proxying to a TLS docker-registry."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    temps = "\n".join(f"  {kind}_temp_path {workdir / kind};" for kind in
                      ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = workdir / "nginx.conf"
    conf.write_text(f"""
user root;
worker_processes 1;
events {{ worker_connections 256; }}
http {{
  access_log off;
{temps}
  server {{
    listen 127.0.0.1:{port} ssl;
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
    return Nginx(workdir, conf, port)
