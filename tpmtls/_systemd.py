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


LISTEN_FD = "fd://"  # --listen fd://: the socket systemd passes, as dockerd -H fd:// spells it


def passed_local_socket(what: str, *, allow_unix: bool) -> socket.socket:
    """The socket systemd passed, refused unless only this machine can reach it: a loopback TCP
    address, or a unix socket when `allow_unix` (the proxies' rule for --listen, applied to the
    .socket unit's ListenStream= too)."""
    import ipaddress

    sock = passed_socket(what)
    if sock.family == socket.AF_UNIX and allow_unix:
        return sock
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        host = str(sock.getsockname()[0]).split("%")[0]
        if ipaddress.ip_address(host).is_loopback:
            return sock
        where = f"{host}:{sock.getsockname()[1]}"
    else:
        where = "a unix socket" if sock.family == socket.AF_UNIX else f"address family {sock.family.name}"
    sock.close()
    allowed = "a unix socket or a loopback address" if allow_unix else "a loopback address (127.0.0.1:PORT, [::1]:PORT)"
    raise UsageError(f"{what}: refusing the socket systemd passed, {where}: anyone reaching it would act with "
                     f"this machine's TPM identity; set ListenStream= to {allowed}")
