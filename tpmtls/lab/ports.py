"""Free loopback ports for the lab's servers, never handed out twice in one process."""

from __future__ import annotations

import random
import socket
import threading

HOST = "127.0.0.1"
_lock = threading.Lock()
# Ports handed out by free_port() in this process (avoid double hand-outs).
_reserved_ports: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            lo, hi = (int(x) for x in f.read().split())
            return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def _ports_bindable(first: int, count: int) -> bool:
    socks: list[socket.socket] = []
    try:
        for p in range(first, first + count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind((HOST, p))
        return True
    except OSError:
        return False
    finally:
        for s in socks:
            s.close()


def free_port(count: int = 1) -> int:
    """A free 127.0.0.1 TCP port p such that p .. p+count-1 are all free (swtpm needs 2 consecutive).

    Ports are preferably chosen below the kernel's ephemeral range so that
    outgoing client connections cannot grab them between stop and restart of a
    server on the same port.  Ports returned earlier in this process are never
    returned again.
    """
    if count < 1:
        raise ValueError("count must be >= 1")
    eph_lo, eph_hi = _ephemeral_range()
    rng = random.Random()

    def ok(p: int) -> bool:
        if p < 1024 or p + count - 1 > 65535:
            return False
        with _lock:
            if any(q in _reserved_ports for q in range(p, p + count)):
                return False
        if not _ports_bindable(p, count):
            return False
        with _lock:
            _reserved_ports.update(range(p, p + count))
        return True

    # 1) random ports below the ephemeral range (stable across restarts).
    lo, hi = 10000, eph_lo - count
    if hi > lo:
        for _ in range(200):
            p = rng.randint(lo, hi)
            if ok(p):
                return p
    # 2) kernel-assigned ports.
    for _ in range(200):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((HOST, 0))
            p = s.getsockname()[1]
        finally:
            s.close()
        if ok(p):
            return p
    raise RuntimeError(f"could not find {count} consecutive free TCP ports on {HOST}")
