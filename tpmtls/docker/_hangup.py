"""Did a local client close its connection, or only its sending half?

Both read as end-of-file. The difference matters to `tpmtls daemon-proxy`: the docker CLI
half-closes when its stdin ends and still reads the container's output, but a CLI that was
killed (or is done) has closed the whole socket, and its upstream connection must be released.
- unix socket: poll(2) reports POLLHUP only when the peer closed both halves (its
  `sk_shutdown` is SHUTDOWN_MASK; a shutdown(SHUT_WR) gives POLLRDHUP alone);
- loopback TCP: a FIN looks the same either way, but the peer socket is in this network
  namespace's /proc/net/tcp{,6}: after close() it is orphaned (inode 0) or gone, after
  shutdown() it still belongs to a process. Measured on Linux 6.1: docs/daemon.md, "How a
  connection ends".
"""

from __future__ import annotations

import select
import socket
import struct

_TABLES = {socket.AF_INET: "/proc/net/tcp", socket.AF_INET6: "/proc/net/tcp6"}


def peer_closed(sock: socket.socket, peer: object) -> bool:
    """True when the client at `peer` (accept()'s address) closed the whole connection."""
    if sock.family == socket.AF_UNIX:
        poller = select.poll()
        poller.register(sock, select.POLLRDHUP)
        return any(ev & (select.POLLHUP | select.POLLERR) for _fd, ev in poller.poll(0))
    try:
        here = sock.getsockname()
    except OSError:
        return True  # reset: nothing is connected any more
    table = _TABLES.get(sock.family)
    if table is None or not isinstance(peer, tuple):
        return True
    theirs, ours = _hex(sock.family, peer), _hex(sock.family, here)
    try:
        with open(table, encoding="ascii") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 9 and fields[1] == theirs and fields[2] == ours:
                    return fields[9] == "0"  # inode 0: no process holds it any more
    except OSError:
        return True
    return True  # not listed: already gone


def _hex(family: int, address: tuple) -> str:  # type: ignore[type-arg]
    """An address as /proc/net/tcp writes it: the raw words in host byte order, then the port."""
    raw = socket.inet_pton(family, address[0].split("%")[0])
    words = "".join("%08X" % struct.unpack("=I", raw[i:i + 4])[0] for i in range(0, len(raw), 4))
    return f"{words}:{address[1]:04X}"


__all__ = ["peer_closed"]
