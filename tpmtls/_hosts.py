"""Whether a string is a host: a DNS name (RFC 1123 labels, up to 253 characters) or an IP address.

One rule for every HOST[:PORT] the commands and the pairing store take, checked before anything
is dialled or made.
"""

from __future__ import annotations

import ipaddress
import re

_DNS_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"^{_DNS_LABEL}(?:\.{_DNS_LABEL})*\.?$")


def is_host(host: str) -> bool:
    """True for an IPv4/IPv6 address or a DNS name (a trailing dot allowed)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return len(host) <= 253 and _DNS_NAME.match(host) is not None
    return True
