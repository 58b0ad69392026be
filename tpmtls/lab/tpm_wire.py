"""Raw TPM 2.0 commands over swtpm's socket, with timeouts (TPM 2.0 Part 1, 18.2: tag, size, code).

The harness's own TPM commands (readiness probe, dictionary-attack set-up,
TPM2_Shutdown) go this way, so a wedged or busy swtpm can never hang the test process
and the harness loads no TCTI in-process.
"""

from __future__ import annotations

import socket
import struct

from .ports import HOST

TPM_ST_NO_SESSIONS = 0x8001
TPM_ST_SESSIONS = 0x8002
TPM_CC_GET_RANDOM = 0x017B
TPM_CC_SHUTDOWN = 0x0145
TPM_CC_DA_PARAMETERS = 0x013A
TPM_CC_DA_LOCK_RESET = 0x0139
TPM_RH_LOCKOUT = 0x4000000A
TPM_RS_PW = 0x40000009
TPM_SU_CLEAR = 0x0000
TPM_RC_INITIALIZE = 0x0100
TPM_RC_RETRY = 0x0922
TPM_RC_YIELDED = 0x0908
TPM_RC_TESTING = 0x090A


def cmd_no_auth(cc: int, params: bytes) -> bytes:
    return struct.pack(">HII", TPM_ST_NO_SESSIONS, 10 + len(params), cc) + params


def cmd_lockout_pw(cc: int, params: bytes) -> bytes:
    """Command on TPM_RH_LOCKOUT with an empty password authorization."""
    auth = struct.pack(">IHBH", TPM_RS_PW, 0, 0, 0)  # handle, nonce, attrs, hmac
    body = struct.pack(">I", TPM_RH_LOCKOUT) + struct.pack(">I", len(auth)) + auth + params
    return struct.pack(">HII", TPM_ST_SESSIONS, 10 + len(body), cc) + body


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    for _ in range(10000):
        if len(buf) >= n:
            break
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("TPM closed the connection")
        buf += chunk
    return buf


def tpm_raw(port: int, command: bytes, timeout: float = 2.0) -> int:
    """Send one raw TPM command to swtpm's data port; return the response code."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(command)
        _tag, size, rc = struct.unpack(">HII", _recv_exact(sock, 10))
        if size > 10:
            _recv_exact(sock, min(size - 10, 65536))
        return rc


def established_clients(port: int) -> int:
    """Number of ESTABLISHED TCP connections to 127.0.0.1:port (server side)."""
    want = f"0100007F:{port:04X}"
    n = 0
    try:
        with open("/proc/net/tcp", encoding="ascii") as f:
            next(f, None)
            for line in f:
                fields = line.split()
                if len(fields) > 3 and fields[1] == want and fields[3] == "01":
                    n += 1
    except OSError:
        return 0
    return n
