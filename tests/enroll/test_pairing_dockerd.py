"""Pairing end to end: enroll-agent under systemd-socket-activate hands its socket to a real
dockerd (same PID); a connection made during the hand-off is served by dockerd; then
tpmtls.docker_client and the stock docker CLI through daemon-proxy work on the same port."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import tempfile
import threading
from pathlib import Path

import pytest

import tpmtls
from support.commands import require
from support.daemon import DOCKER, ProxyProcess, busybox_archive, run, tpmtls_cli
from support.pairing import AgentProcess
from support.peers import read_to_close
from support.schemas import validated
from support.wait import wait_until
from tpmtls.enroll.pairing_client import ensure_server_enrolled
from tpmtls.testing import free_port

IMAGE = "busybox-tpmtls:1"


def _dockerd_args(root: Path, run_dir: Path) -> list[str]:
    """What support.daemon.TlsDockerd passes, as --dockerd-arg values (private roots, no networking)."""
    (root / "empty.json").write_text("{}\n")
    args = [f"--config-file={root / 'empty.json'}", "--iptables=false", "--ip6tables=false", "--bridge=none",
            "--storage-driver=vfs", f"--data-root={root / 'data'}", f"--exec-root={run_dir / 'exec'}",
            f"--pidfile={run_dir / 'docker.pid'}"]
    return [f"--dockerd-arg={a}" for a in args]


def _ping(tls_sock) -> bytes:
    tls_sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
    return read_to_close(tls_sock)


@pytest.fixture
def run_dir():
    """A short directory under /tmp for dockerd's exec-root, pid file and sockets (unix socket
    paths are limited to 108 bytes)."""
    require("dockerd", "docker", "systemd-socket-activate")
    path = Path(tempfile.mkdtemp(prefix="tpe-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.machine  # the agent execs dockerd (root, /etc/docker/key.json)
def test_pair_then_dockerd_on_the_same_socket(pairing_store, run_dir, test_tpm, tmp_path):
    store, state = pairing_store
    port = free_port()
    host = f"127.0.0.1:{port}"
    agent_args = ["--ca", str(store.ca_dir / "ca.crt"), "--state", str(state), *_dockerd_args(tmp_path, run_dir)]
    with AgentProcess(tmp_path, test_tpm.env, *agent_args, activate_on=host) as agent:
        # The first connection starts the agent (systemd socket activation). Once the agent has stored
        # the certificate it accepts nothing more; a second client connecting then, while the agent
        # answers and execs dockerd, waits in the socket's backlog.
        waiting: list[socket.socket] = []

        def connect_once_stored() -> None:
            agent.wait_for("enrolled by")
            waiting.append(socket.create_connection(("127.0.0.1", port), timeout=60))

        second = threading.Thread(target=connect_once_stored, daemon=True)
        done = ensure_server_enrolled(store, host, trust_on_first_use=True, tcti=test_tpm.tcti,
                                      on_first_use=lambda _fingerprint: second.start())
        second.join(60)
        assert done.changed and done.trust == "first-use"
        assert done.fingerprint == agent.fingerprint()  # what the agent printed for out-of-band comparison
        assert stat.S_IMODE(os.stat(state / "server.key").st_mode) == 0o600

        # that client is served by dockerd (not dropped), which now presents the CA's certificate
        ctx = tpmtls.ssl_context(done.cert_path / "cert.pem", done.cert_path / "key.pem", done.cert_path / "ca.pem",
                                 tcti=test_tpm.tcti)
        with ctx.wrap_socket(waiting[0], server_hostname="127.0.0.1") as tls:
            reply = _ping(tls)
        assert reply.startswith(b"HTTP/1.1 200 OK") and reply.endswith(b"OK"), reply[:300]
        assert "starting dockerd" in agent.text()

        # exec, not fork: dockerd has the agent's PID (so LISTEN_PID held)
        pidfile = run_dir / "docker.pid"
        wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 30, f"dockerd writing {pidfile}")
        assert int(pidfile.read_text()) == agent.pid

        # docker-py through tpmtls, with the store's directory as DOCKER_CERT_PATH
        client = tpmtls.docker_client(done.base_url, cert_path=done.cert_path, tcti=test_tpm.tcti)
        try:
            assert client.ping() is True
            assert client.version()["ApiVersion"]
        finally:
            client.close()

        # idempotent: nothing to do the second time, in the library and the CLI
        again = ensure_server_enrolled(store, host, tcti=test_tpm.tcti)
        assert not again.changed and again.cert_path == done.cert_path
        proc = tpmtls_cli("enroll", host, "--store", str(store.root), env=test_tpm.env)
        assert proc.stdout.startswith(f"{host} is already enrolled") and proc.stderr == ""
        proc = tpmtls_cli("enroll", host, "--store", str(store.root), "--format", "json", env=test_tpm.env)
        assert validated(proc.stdout, "enroll") == {
            "scheme": "pairing", "host": done.host, "port": done.port, "changed": False, "fingerprint": done.fingerprint,
            "trust": "pinned", "docker_host": done.base_url, "docker_cert_path": str(done.cert_path)}

        # the stock docker CLI through daemon-proxy, same port
        sock = run_dir / "proxy.sock"
        with ProxyProcess(tmp_path, test_tpm.env, "--upstream", done.base_url, "--listen", f"unix://{sock}",
                          "--cert-path", str(done.cert_path)):
            env = {"DOCKER_HOST": f"unix://{sock}", "DOCKER_CONFIG": str(tmp_path / "docker-config")}
            loaded = run([DOCKER, "load", "-i", str(busybox_archive(tmp_path / "busybox.tar", IMAGE))], env=env)
            assert loaded.returncode == 0, loaded.stderr
            out = run([DOCKER, "run", "--rm", IMAGE, "echo", "paired"], env=env)
            assert out.returncode == 0 and out.stdout == "paired\n", out.stderr
            info = json.loads(run([DOCKER, "version", "--format", "{{json .Server}}"], env=env).stdout)
            assert info["Version"]

    # Restart: already enrolled, the agent execs dockerd at once; the activating client is served.
    with AgentProcess(tmp_path, test_tpm.env, *agent_args, activate_on=host) as agent:
        client = tpmtls.docker_client(done.base_url, cert_path=done.cert_path, tcti=test_tpm.tcti)
        try:
            assert client.ping() is True
        finally:
            client.close()
        assert "already enrolled" in agent.text()
