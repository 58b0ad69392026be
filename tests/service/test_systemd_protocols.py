"""The two systemd protocols tpmtls speaks itself: readiness over $NOTIFY_SOCKET (sd_notify(3)) and
sockets passed from fd 3 (sd_listen_fds(3)), against a real datagram socket and systemd's own
`systemd-socket-activate`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from support.commands import require
from tpmtls.testing import free_port

NOTIFY = "from tpmtls._systemd import notify; import sys; sys.exit(0 if notify('READY=1', 'STATUS=serving') else 3)"


def _notify_socket(address: str | bytes) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(address)
    s.settimeout(30)
    return s


def test_notify_sends_one_datagram_to_a_path(tmp_path):
    with _notify_socket(str(tmp_path / "notify")) as s:
        env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify")}
        subprocess.run([sys.executable, "-c", NOTIFY], env=env, check=True, timeout=60)
        assert s.recv(4096) == b"READY=1\nSTATUS=serving"


def test_notify_to_an_abstract_socket(tmp_path):
    name = f"tpmtls-test-{os.getpid()}-{tmp_path.name}"
    with _notify_socket(b"\0" + name.encode()) as s:
        env = {**os.environ, "NOTIFY_SOCKET": "@" + name}
        subprocess.run([sys.executable, "-c", NOTIFY], env=env, check=True, timeout=60)
        assert s.recv(4096) == b"READY=1\nSTATUS=serving"


def test_without_a_manager_notify_is_a_no_op(tmp_path):
    for value in ("", str(tmp_path / "nobody-listens")):
        env = {**os.environ, "NOTIFY_SOCKET": value}
        proc = subprocess.run([sys.executable, "-c", NOTIFY], env=env, timeout=60)
        assert proc.returncode == 3


SERVE = """
from tpmtls._systemd import passed_socket
import os
s = passed_socket("test")
assert "LISTEN_FDS" not in os.environ  # no child takes it for its own
conn, _ = s.accept()
conn.sendall(b"hello from fd %d" % s.fileno())
conn.close()
"""


def test_the_socket_systemd_passes_is_served(tmp_path):
    require("systemd-socket-activate")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
    proc = subprocess.Popen(["systemd-socket-activate", "-l", f"127.0.0.1:{port}", sys.executable, "-c", SERVE],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for _ in range(300):  # bounded: systemd-socket-activate binds, then waits for us
            try:
                conn = socket.create_connection(("127.0.0.1", port), timeout=30)
                break
            except ConnectionRefusedError:
                time.sleep(0.05)
        with conn:
            assert conn.recv(100) == b"hello from fd 3"
        assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sockets_meant_for_another_process_are_not_taken():
    script = "from tpmtls._systemd import passed_fds; print(passed_fds())"
    env = {**os.environ, "LISTEN_FDS": "1", "LISTEN_PID": "1"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True,
                         timeout=60).stdout
    assert out.strip() == "[]"
