"""An NGINX front for docker.sock, without socat: mTLS terminated by NGINX, proxied straight
to dockerd's unix socket with what the Docker API needs through a proxy.

Rendered from the template beside this module (`tpmtls certs nginx-front`); the same
rendering, for container paths, is `helpers/docker-front/nginx.conf`. Every value put into
the configuration is checked against what NGINX takes there first, so none can end a
directive and start another.
"""

from __future__ import annotations

import grp
import os
import re
import stat
from pathlib import Path
from string import Template

from ..errors import UsageError

TEMPLATE = Path(__file__).with_name("nginx-front.conf.template")
#: A user or group name NGINX's `user` directive takes: a POSIX-style name (useradd's rule),
#: nothing NGINX's parser would read as the end of a word or a directive.
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?$")
#: A path NGINX reads as one word inside `proxy_pass http://unix:PATH:`: no space, quote, `;`,
#: braces, `$` (a variable) or `:` (which ends the socket path there).
_PATH = re.compile(r"^/[A-Za-z0-9_./@+-]*$")


def check_user(user: str) -> str:
    """`USER` or `USER GROUP` (also `USER:GROUP`) for NGINX's `user` directive, as that directive's words."""
    words = user.replace(":", " ").split()
    if not 1 <= len(words) <= 2 or not all(_NAME.match(w) for w in words):
        raise UsageError(f"--user {user[:60]!r}: give a user name, or a user and a group ('nginx docker'); "
                         "letters, digits, _ . - only")
    return " ".join(words)


def check_socket(path: str) -> str:
    """dockerd's socket path as NGINX's `proxy_pass http://unix:PATH:` can take it."""
    if not path.startswith("/"):
        raise UsageError(f"--socket {path[:60]!r}: the daemon's socket must be an absolute path")
    if not _PATH.match(path) or len(path) > 107:
        raise UsageError(f"--socket {path[:60]!r}: NGINX cannot take this path (no spaces, quotes, ; {{ }} $ or :; "
                         "at most 107 bytes, a unix socket's limit)")
    return path


def default_user(socket: str) -> str:
    """Without --user: NGINX's own user in the group that may open the socket, if this machine has
    the socket and the group is not root's; otherwise the user must say who may open it."""
    try:
        st = os.stat(socket)
    except OSError:
        raise UsageError(f"{socket}: not here, so its group is unknown; give --user USER [GROUP] with a user or "
                         "group that may open the daemon's socket on the machine NGINX runs on "
                         "(e.g. --user 'nginx docker')") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise UsageError(f"{socket}: not a unix socket; give dockerd's socket with --socket")
    if st.st_gid == 0 or not st.st_mode & stat.S_IRWXG:
        raise UsageError(f"{socket}: only root may open it (group root or no group access); give --user root, "
                         "or a docker group to dockerd (its --group) and --user 'nginx docker'")
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        raise UsageError(f"{socket}: its group {st.st_gid} has no name here; give --user USER GROUP") from None
    return check_user(f"nobody {group}")


def render_nginx_front(*, cert: str, key: str, ca: str, listen: str = "0.0.0.0:2376",
                       socket: str = "/var/run/docker.sock", server_name: str = "_", user: str | None = None,
                       crl: str | None = None) -> str:
    """nginx.conf text: `listen` with ssl, client certificates required (and checked against `crl`, the
    CA's CRL from `tpmtls ca crl`, if given), proxied to `socket`."""
    for value in (cert, key, ca, listen, server_name, *([crl] if crl else [])):
        if not re.match(r"^[A-Za-z0-9_./@+:\[\]-]+$", value):
            raise UsageError(f"{value[:60]!r}: NGINX cannot take this in its configuration as one word")
    user_line = f"user {check_user(user)};\n" if user else ""
    crl_lines = (f"        # Revoked clients are refused (tpmtls ca revoke). NGINX reads the CRL when it starts and on\n"
                 f"        # reload: re-sign it before its next update and reload (docs/revocation.md).\n"
                 f"        ssl_crl                {crl};\n") if crl else ""
    return Template(TEMPLATE.read_text()).substitute(
        user_line=user_line, listen=listen, server_name=server_name, cert=cert, key=key, ca=ca,
        socket=check_socket(socket), crl_lines=crl_lines, session_lines=_CRL_SESSIONS if crl else _SESSIONS)


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


__all__ = ["check_socket", "check_user", "default_user", "render_nginx_front"]
