"""Who may use a loopback proxy that signs with this machine's TPM key.

Both proxies (`tpmtls proxy`, `tpmtls daemon-proxy` on TCP) listen on loopback only, but a
web page can still reach loopback: it rebinds its own name to 127.0.0.1 and is then
same-origin with the proxy (DNS rebinding). Docker, skopeo and tpmtls send a Host that is
a loopback address, `localhost` (or `*.localhost`, RFC 6761) or a name the user mapped to loopback (in /etc/hosts, not
in DNS, which is what a rebinding attacker controls), and never a browser's Origin or
Sec-Fetch-* headers; anything else is refused. A request without Host is not a
browser's (browsers always send one).
"""

from __future__ import annotations

import ipaddress
import os
import re
import threading
from typing import Any, Iterable

HOSTS_FILE = "/etc/hosts"
#: What a Host field may be (RFC 9110 7.2): a name or an address, then a port.
_HOST_SYNTAX = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(:[0-9]{1,5})?$")
_hosts_cache: tuple[float, frozenset[str]] = (-1.0, frozenset())
_hosts_lock = threading.Lock()


def _loopback_names_in_hosts_file() -> frozenset[str]:
    """Names /etc/hosts maps to a loopback address (re-read when the file changes)."""
    global _hosts_cache
    try:
        mtime = os.stat(HOSTS_FILE).st_mtime
    except OSError:
        return frozenset()
    with _hosts_lock:
        if _hosts_cache[0] == mtime:
            return _hosts_cache[1]
        names: set[str] = set()
        try:
            with open(HOSTS_FILE, encoding="utf-8", errors="replace") as f:
                for line in f:
                    fields = line.split("#", 1)[0].split()
                    if len(fields) < 2:
                        continue
                    try:
                        if not ipaddress.ip_address(fields[0].split("%")[0]).is_loopback:
                            continue
                    except ValueError:
                        continue
                    names.update(n.lower().rstrip(".") for n in fields[1:])
        except OSError:
            return frozenset()
        _hosts_cache = (mtime, frozenset(names))
        return _hosts_cache[1]


def foreign_caller(headers: Any, allowed_names: Iterable[str] = ()) -> str | None:
    """Why a request with these headers must not be served, or None.

    `headers`: an `email.message.Message` (http.server) or (name, value) pairs (h11). Every
    request on a connection is judged, not only the first: a browser reuses connections."""
    fields = [(str(k), str(v)) for k, v in (headers.items() if hasattr(headers, "items") else headers)]
    names = [k.lower() for k, _ in fields]
    if "origin" in names or any(n.startswith("sec-fetch-") for n in names):
        return "requests from a web browser are refused (Origin/Sec-Fetch headers)"
    hosts = [v.strip() for k, v in fields if k.lower() == "host"]
    if len(hosts) > 1:
        return "a request with more than one Host header is refused"
    host = hosts[0] if hosts else ""
    if host and not _HOST_SYNTAX.match(host):
        return f"Host {host[:80]!r} is not a host[:port]"
    name = host[1:host.index("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
    name = name.lower().rstrip(".")
    allowed = {"localhost", *(n.lower() for n in allowed_names)}
    if not name or name in allowed or name.endswith(".localhost") or name in _loopback_names_in_hosts_file():
        return None
    try:
        if ipaddress.ip_address(name).is_loopback:
            return None
    except ValueError:
        pass
    listed = ", ".join(sorted(allowed))
    return (f"Host {host!r} is neither a loopback address, {listed}, nor a name {HOSTS_FILE} maps to loopback "
            "(DNS rebinding?)")
