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
                       socket: str = "/var/run/docker.sock", server_name: str = "_", user: str | None = None,
                       crl: str | None = None) -> str:
    """nginx.conf text: `listen` with ssl, client certificates required (and checked against `crl`, the
    CA's CRL from `tpmtls ca crl`, if given), proxied to `socket`."""
    user_line = f"user {user};\n" if user else ""
    crl_lines = (f"        # Revoked clients are refused (tpmtls ca revoke). NGINX reads the CRL when it starts and on\n"
                 f"        # reload: re-sign it before its next update and reload (docs/revocation.md).\n"
                 f"        ssl_crl                {crl};\n") if crl else ""
    return Template(TEMPLATE.read_text()).substitute(
        user_line=user_line, listen=listen, server_name=server_name, cert=cert, key=key, ca=ca, socket=socket,
        crl_lines=crl_lines, session_lines=_CRL_SESSIONS if crl else _SESSIONS)


_SESSIONS = """\
        # Session resumption: a client with its key in a TPM signs once, not per connection.
        ssl_session_cache      shared:docker_tls:1m;
        ssl_session_timeout    4h;
        ssl_session_tickets    on;
"""
# A resumed session is not checked against the CRL again: a session in the shared cache would let a
# revoked client back in after the reload for ssl_session_timeout (measured, docs/revocation.md).
# Tickets alone still save the TPM a signature per connection, and their keys are new at every reload.
_CRL_SESSIONS = """\
        # Session resumption by tickets only: their keys are new at every reload, so a revoked client
        # cannot resume a session from before; a shared session cache would outlive the reload.
        ssl_session_cache      off;
        ssl_session_timeout    4h;
        ssl_session_tickets    on;
"""


__all__ = ["render_nginx_front"]
