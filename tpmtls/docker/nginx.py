"""An NGINX front for docker.sock, without socat: mTLS terminated by NGINX, proxied straight
to dockerd's unix socket with what the Docker API needs through a proxy.

Rendered from the template beside this module (`tpmtls certs nginx-front`); the same
rendering, for container paths, is `helpers/docker-front/nginx.conf`.
"""

from __future__ import annotations

from pathlib import Path
from string import Template

TEMPLATE = Path(__file__).with_name("nginx-front.conf.template")


def render_nginx_front(*, cert: str, key: str, ca: str, listen: str = "0.0.0.0:2376",
                       socket: str = "/var/run/docker.sock", server_name: str = "_", user: str | None = None) -> str:
    """nginx.conf text: `listen` with ssl, client certificates required, proxied to `socket`."""
    user_line = f"user {user};\n" if user else ""
    return Template(TEMPLATE.read_text()).substitute(
        user_line=user_line, listen=listen, server_name=server_name, cert=cert, key=key, ca=ca, socket=socket)


__all__ = ["render_nginx_front"]
