"""The two systemd protocols a service speaks: readiness (sd_notify) and socket activation.

Both are a few lines over documented environment variables (sd_notify(3): a datagram to
$NOTIFY_SOCKET; sd_listen_fds(3): $LISTEN_FDS sockets from fd 3, meant for $LISTEN_PID), so
no library: python-systemd needs libsystemd-dev to build and brings the journal API we do not
use; sdnotify (PyPI) covers only the first. Outside systemd both are no-ops.
"""

from __future__ import annotations

import os
import socket

from .errors import UsageError

SD_LISTEN_FDS_START = 3  # sd_listen_fds(3): passed descriptors start at fd 3


def notify(*assignments: str) -> bool:
    """Tell the service manager e.g. "READY=1", "STATUS=…", "STOPPING=1"; False when none listens.

    Never raises: readiness is a courtesy to systemd, and a service must not die because its
    manager went away (sd_notify(3) returns an error, which callers ignore the same way).
    """
    path = os.environ.get("NOTIFY_SOCKET", "")
    if not path or not assignments:
        return False
    if path.startswith("@"):  # abstract namespace (sd_notify(3))
        path = "\0" + path[1:]
    elif not path.startswith("/"):
        return False  # vsock addresses (vsock:CID:PORT) are for VMs, not our services
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(path)
            s.sendall("\n".join(assignments).encode())
    except OSError:
        return False
    return True


def passed_fds() -> list[int]:
    """The descriptors systemd passed to this process (sd_listen_fds(3)); [] when none.

    They are ours only when $LISTEN_PID is our PID (a child that inherited the variables
    must not take its parent's sockets).
    """
    fds, pid = os.environ.get("LISTEN_FDS"), os.environ.get("LISTEN_PID")
    if not fds or pid != str(os.getpid()):
        return []
    if not fds.isdigit() or not 0 < int(fds) < 64:
        raise UsageError(f"LISTEN_FDS={fds!r}: not a descriptor count systemd would pass")
    return list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(fds)))


def passed_socket(what: str) -> socket.socket:
    """The one listening socket systemd passed for `what` (e.g. "tpmtls proxy --listen fd://")."""
    fds = passed_fds()
    if len(fds) != 1:
        raise UsageError(f"{what}: expected one socket from systemd (a .socket unit with one Listen… line), "
                         f"got {len(fds)} (LISTEN_FDS={os.environ.get('LISTEN_FDS', 'unset')})")
    sock = socket.socket(fileno=fds[0])
    if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise UsageError(f"{what}: the socket systemd passed is not a listening stream socket (ListenStream=)")
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)  # no child of ours takes it for its own
    return sock
