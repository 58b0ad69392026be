"""Both proxies as their systemd units run them: `--listen fd://` serves the socket systemd passes
(started by systemd's own `systemd-socket-activate`), READY=1 reaches $NOTIFY_SOCKET once the
upstream has been checked, log lines carry journald's priorities, and a passed socket anyone
could reach is refused (docs/services.md, "Readiness and socket activation")."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from support.commands import require
from support.daemon import DOCKER, DaemonPki, run, start_daemon
from tpmtls.lab.process import child_env
from tpmtls.testing import free_port


class Activated:
    """`systemd-socket-activate -l ADDRESS` in front of `python -m tpmtls …`; stderr to a file
    that is the "journal" ($JOURNAL_STREAM names it), readiness to a datagram socket of ours."""

    def __init__(self, work: Path, listen: str, env: dict[str, str], *args: str) -> None:
        require("systemd-socket-activate")
        self.notify_path = work / f"notify-{time.monotonic_ns()}"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.notify.settimeout(60)
        self.log = work / f"stderr-{time.monotonic_ns()}"
        self._err = open(self.log, "wb")  # noqa: SIM115 - kept open for the child's lifetime
        st = os.fstat(self._err.fileno())
        passed = {**env, "NOTIFY_SOCKET": str(self.notify_path), "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}",
                  "HOME": os.environ.get("HOME", "/root")}
        setenv = [f"-E{k}={v}" for k, v in passed.items()]
        self.proc = subprocess.Popen(["systemd-socket-activate", "-l", listen, *setenv,
                                      sys.executable, "-m", "tpmtls", *args],
                                     stdout=subprocess.DEVNULL, stderr=self._err, env=child_env())

    def ready(self) -> list[str]:
        """The assignments of the first datagram (READY=1, STATUS=…)."""
        return self.notify.recv(4096).decode().split("\n")

    def our_lines(self) -> list[str]:
        """Our log lines: journald's format (systemd-socket-activate's own lines have no <N>)."""
        return [line for line in self.log.read_text(errors="replace").splitlines() if line.startswith("<")]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout=60)
        finally:
            self._err.close()
            self.notify.close()


def _poke(host: str, port: int) -> None:
    """A first connection, which is what makes systemd-socket-activate start the service."""
    for _ in range(600):  # bounded: it binds first, then waits for us
        try:
            socket.create_connection((host, port), timeout=30).close()
            return
        except ConnectionRefusedError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {host}:{port}")


def test_registry_proxy_on_systemds_port(registry, tpm_certs, test_tpm, tmp_path):
    port = free_port()
    proxy = Activated(tmp_path, f"127.0.0.1:{port}", test_tpm.env, "proxy", "--upstream", f"localhost:{registry.port}",
                      "--listen", "fd://", "--cert-dir", str(tpm_certs))
    try:
        _poke("127.0.0.1", port)
        ready = proxy.ready()
        assert ready[0] == "READY=1"
        assert ready[1] == f"STATUS=serving http://127.0.0.1:{port} for https://localhost:{registry.port}; upstream answered"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=60) as r:  # noqa: S310 - loopback
            assert r.status == 200 and r.read() == b"{}"
        assert proxy.stop() == 0
    finally:
        proxy.stop()
    lines = proxy.our_lines()
    assert lines[0].startswith(f"<6>listening on http://127.0.0.1:{port}, forwarding to https://localhost:{registry.port}")
    assert any(line.startswith("<6>GET /v2/ 200") for line in lines)
    assert lines[-1].startswith("<6>stopped after 1 requests")  # the GET (the first connection sent none)


def test_registry_proxy_down_upstream_is_ready_with_a_warning(tpm_certs, test_tpm, tmp_path):
    port, dead = free_port(), free_port()
    proxy = Activated(tmp_path, f"127.0.0.1:{port}", test_tpm.env, "proxy", "--upstream", f"localhost:{dead}",
                      "--listen", "fd://", "--cert-dir", str(tpm_certs))
    try:
        _poke("127.0.0.1", port)
        assert proxy.ready()[1].endswith("upstream check failed: 502 until it answers")
    finally:
        proxy.stop()
    assert proxy.our_lines()[0].startswith("<4>listening on")  # a warning: journalctl -p warning shows it


def test_a_passed_socket_off_loopback_is_refused(tpm_certs, test_tpm, tmp_path):
    port = free_port()
    proxy = Activated(tmp_path, f"0.0.0.0:{port}", test_tpm.env, "proxy", "--upstream", "localhost:1",
                      "--listen", "fd://", "--cert-dir", str(tpm_certs))
    try:
        _poke("127.0.0.1", port)
        assert proxy.proc.wait(timeout=60) == 1
    finally:
        proxy.stop()
    errors = [line for line in proxy.log.read_text().splitlines() if line.startswith("tpmtls")]
    assert errors == [f"tpmtls: tpmtls proxy --listen fd://: refusing the socket systemd passed, 0.0.0.0:{port}: anyone "
                      "reaching it would act with this machine's TPM identity; set ListenStream= to a loopback "
                      "address (127.0.0.1:PORT, [::1]:PORT)"]


def test_fd_without_systemd_is_one_line(cli, tpm_certs):
    line = cli.fails("proxy", "--upstream", "localhost:1", "--listen", "fd://", "--cert-dir", str(tpm_certs),
                     env={"LISTEN_FDS": "", "LISTEN_PID": ""})
    assert line == ("tpmtls: tpmtls proxy --listen fd://: expected one socket from systemd (a .socket unit with one "
                    "Listen… line), got 0 (LISTEN_FDS=)")


@pytest.fixture(scope="module")
def tls_daemon(test_tpm, tmp_path_factory):
    require("openssl", "dockerd", "docker")
    root = tmp_path_factory.mktemp("activated-daemon")
    dpki = DaemonPki(root / "pki", test_tpm.env)
    (root / "daemon").mkdir()
    daemon = start_daemon(root / "daemon", dpki)
    with daemon.dockerd:
        yield dpki, daemon.port


@pytest.mark.machine  # starts a dockerd
def test_daemon_proxy_on_systemds_unix_socket(tls_daemon, tmp_path):
    dpki, port = tls_daemon
    sock = tmp_path / "run" / "docker.sock"
    sock.parent.mkdir()
    proxy = Activated(tmp_path, str(sock), dpki.env, "daemon-proxy", "--upstream", f"tcp://127.0.0.1:{port}",
                      "--listen", "fd://", "--cert-path", str(dpki.tpm_dir))
    try:
        for _ in range(600):  # bounded: until systemd-socket-activate has bound it
            if sock.exists():
                break
            time.sleep(0.05)
        version = run([DOCKER, "version", "--format", "{{.Server.Version}}"],
                      env=child_env({"DOCKER_HOST": f"unix://{sock}"}))
        assert version.returncode == 0 and version.stdout.strip(), version.stderr
        ready = proxy.ready()
        assert ready[0] == "READY=1" and ready[1].startswith(f"STATUS=serving unix://{sock} for tcp://127.0.0.1:{port}")
        assert proxy.stop() == 0
    finally:
        proxy.stop()
    assert sock.exists(), "the socket is systemd's: the proxy must not remove it"
    assert proxy.our_lines()[-1].startswith("<6>stopped after 1 connection")
