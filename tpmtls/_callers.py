"""Who may use a loopback proxy that signs with this machine's TPM key.

Both proxies (`tpmtls proxy`, `tpmtls daemon-proxy` on TCP) listen on loopback only, but a
web page can still reach loopback: it rebinds its own name to 127.0.0.1 and is then
same-origin with the proxy (DNS rebinding). Docker, skopeo and tpmtls send a Host that is
a loopback address, `localhost` or a name the user mapped to loopback, and never a
browser's Origin or Sec-Fetch-* headers; anything else is refused.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Iterable


def foreign_caller(headers: Any, allowed_names: Iterable[str] = ()) -> str | None:
    """Why a request with these headers must not be served, or None (`headers`: a Message/mapping)."""
    if headers.get("Origin") is not None or any(str(k).lower().startswith("sec-fetch-") for k in headers.keys()):
        return "requests from a web browser are refused (Origin/Sec-Fetch headers)"
    host = headers.get("Host", "") or ""
    name = host[1:host.index("]")] if host.startswith("[") and "]" in host else host.rsplit(":", 1)[0]
    name = name.lower().rstrip(".")
    allowed = {"localhost", *(n.lower() for n in allowed_names)}
    if name in allowed:
        return None
    try:
        if ipaddress.ip_address(name).is_loopback:
            return None
    except ValueError:
        pass
    names = ", ".join(sorted(allowed))
    return f"Host {host!r} is neither a loopback address nor one of {names} (DNS rebinding?)"
