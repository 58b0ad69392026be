"""What a TLS Docker daemon reads: `daemon.json`'s TLS block and the systemd drop-in it
needs; and Docker's host URLs (`tcp://HOST:PORT`, `unix:///path`).

The certificate and key are checked (`certcheck.check_server`, `check_names`) before
anything is written, so a daemon is never configured with a certificate it would refuse
to serve.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import UsageError
from .certcheck import check_names, check_server

DEFAULT_TCP_HOST = "tcp://0.0.0.0:2376"
DEFAULT_SOCKET = "/var/run/docker.sock"


@dataclass(frozen=True)
class DaemonConfig:
    """The two files a TLS daemon needs: `daemon.json` and the systemd drop-in."""

    daemon_json: str
    dropin: str


def parse_host(url: str) -> tuple[str, str, int | None]:
    """`tcp://HOST:PORT` → ("tcp", HOST, PORT); `unix:///path` → ("unix", "/path", None)."""
    parts = urlsplit(url)
    if parts.scheme == "unix" and parts.path.startswith("/") and not parts.netloc:
        return "unix", parts.path, None
    if parts.scheme == "tcp" and parts.hostname is not None:
        try:
            port = parts.port
        except ValueError:
            port = None
        if port and not parts.path.strip("/"):
            return "tcp", parts.hostname, port
    raise UsageError(f"{url!r}: write a Docker host as tcp://HOST:PORT or unix:///absolute/path")


def daemon_config(cert: str, key: str, ca: str, hosts: list[str], socket: str | None = DEFAULT_SOCKET,
                  dockerd: str | None = None) -> DaemonConfig:
    """`daemon.json` with tls/tlsverify/tlscacert/tlscert/tlskey/hosts, and the systemd drop-in.

    The drop-in clears ExecStart: Debian's docker.service starts `dockerd -H fd://`, and
    dockerd refuses to start when `hosts` is both a flag and in daemon.json (docs/daemon.md,
    "A TLS-protected daemon").
    """
    server_cert = check_server(cert, key, ca)
    all_hosts = [f"unix://{socket}"] if socket else []
    for h in hosts:
        kind, name, _port = parse_host(h)
        if kind == "tcp":
            check_names(cert, server_cert, name)
        if h not in all_hosts:
            all_hosts.append(h)
    if not any(parse_host(h)[0] == "tcp" for h in all_hosts):
        raise UsageError("no tcp:// host: a TLS daemon needs at least one --host tcp://ADDRESS:PORT")
    block = {
        "tls": True,
        "tlsverify": True,
        "tlscacert": str(Path(ca).resolve()),
        "tlscert": str(Path(cert).resolve()),
        "tlskey": str(Path(key).resolve()),
        "hosts": all_hosts,
    }
    binary = dockerd or shutil.which("dockerd") or "/usr/bin/dockerd"
    dropin = ("# /etc/systemd/system/docker.service.d/docker.conf (written by tpmtls certs daemon-config)\n"
              "# docker.service passes -H fd://; with \"hosts\" in daemon.json dockerd refuses to start\n"
              "# unless ExecStart is cleared first.\n"
              "[Service]\nExecStart=\n"
              f"ExecStart={binary}\n")
    return DaemonConfig(json.dumps(block, indent=2) + "\n", dropin)


__all__ = ["DEFAULT_SOCKET", "DEFAULT_TCP_HOST", "DaemonConfig", "daemon_config", "parse_host"]
