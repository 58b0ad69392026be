"""`tpmtls daemon-proxy`: the stock docker CLI on a local socket, TPM-backed mTLS to a real
dockerd --tlsverify; hijacked streams, loopback-only listening, concurrency, resumption."""

from __future__ import annotations

import re
import shutil
import socket
import stat
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from support import ROOT
from support.commands import one_line
from support.daemon import (
    DOCKER,
    ProxyProcess,
    run,
    tpmtls_cli,
)
from support.proxy import in_thread
from support.wait import wait_until
from tpmtls.lab.process import child_env
from tpmtls.testing import free_port

IMAGE = "busybox-tpmtls:1"


@pytest.fixture(scope="module")
def proxy(daemon_pki, tls_dockerd, busybox_image, tmp_path_factory):
    _daemon, port = tls_dockerd
    work = tmp_path_factory.mktemp("proxy")
    sock = work / "run" / "docker.sock"
    with ProxyProcess(work, daemon_pki.env, "--upstream", f"tcp://127.0.0.1:{port}", "--listen", f"unix://{sock}",
                      "--cert-path", str(daemon_pki.tpm_dir)) as p:
        p.socket = sock
        yield p


def cli_env(proxy, tmp: Path) -> dict[str, str]:
    """The stock CLI as a user runs it: DOCKER_HOST at the proxy, no TLS variables."""
    return {"DOCKER_HOST": f"unix://{proxy.socket}", "DOCKER_CONFIG": str(tmp / "docker-config")}


def docker(proxy, tmp: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    proc = run([DOCKER, *args], env=cli_env(proxy, tmp), input=input)
    assert proc.returncode == 0, f"docker {' '.join(args)}: {proc.stderr}"
    return proc


def test_stock_cli_runs_version_images_and_run_through_the_proxy(proxy, tmp_path):
    assert stat.S_IMODE(proxy.socket.stat().st_mode) == 0o660
    server = docker(proxy, tmp_path, "version", "--format", "{{.Server.APIVersion}}").stdout.strip()
    assert server.startswith("1.")
    assert IMAGE.split(":")[0] in docker(proxy, tmp_path, "images").stdout
    out = docker(proxy, tmp_path, "run", "--rm", IMAGE, "echo", "hello through the proxy").stdout
    assert out == "hello through the proxy\n"


def test_interactive_exec_gets_its_stdin_and_its_end(proxy, tmp_path):
    name = f"box{time.monotonic_ns()}"
    docker(proxy, tmp_path, "run", "-d", "--name", name, IMAGE, "sleep", "120")
    try:
        # stdin reaches the container, and its end (a TLS half-close upstream) ends `cat`
        out = docker(proxy, tmp_path, "exec", "-i", name, "cat", input="line one\nline two\n").stdout
        assert out == "line one\nline two\n"
        out = docker(proxy, tmp_path, "exec", "-i", name, "sh", "-c", "read a; echo got: $a",
                     input="tpm-backed stdin\n").stdout
        assert out == "got: tpm-backed stdin\n"
        # interactive: answer a line before stdin is closed
        p = subprocess.Popen([DOCKER, "exec", "-i", name, "sh", "-c", "read a; echo first: $a; read b; echo second: $b"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=child_env(cli_env(proxy, tmp_path)))
        assert p.stdin is not None and p.stdout is not None
        p.stdin.write("one\n")
        p.stdin.flush()
        assert p.stdout.readline() == "first: one\n"
        out, err = p.communicate("two\n", timeout=60)
        assert (p.returncode, out) == (0, "second: two\n"), err
    finally:
        docker(proxy, tmp_path, "rm", "-f", name)


def test_eight_concurrent_cli_calls_all_succeed_on_resumed_sessions(proxy, tmp_path):
    before = len(proxy.lines())
    commands = [("version", "--format", "{{.Server.Version}}"), ("images", "-q"), ("ps", "-a"),
                ("run", "--rm", IMAGE, "echo", "concurrent")] * 2
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda args: run([DOCKER, *args], env=cli_env(proxy, tmp_path)), commands))
    assert [r.returncode for r in results] == [0] * 8, [r.stderr for r in results]
    assert all(r.stdout.strip() == "concurrent" for r in results if "run" in r.args)
    # the proxy logs a connection once it has ended: wait for the eight lines (or fail naming them)
    wait_until(lambda: len([ln for ln in proxy.lines()[before:] if ": conn " in ln]) >= 8, 30,
               "the proxy logging the eight connections")
    new = [ln for ln in proxy.lines()[before:] if ": conn " in ln]
    assert len(new) >= 8, new
    assert all(": resumed, " in ln for ln in new), [ln for ln in new if ": resumed, " not in ln]  # no TPM signature per call
    signatures = [int(m.group(1)) for ln in proxy.lines() if (m := re.search(r"TPM signatures so far: (\d+)", ln))]
    assert signatures[-1] <= 2 and len(signatures) >= 9, signatures


def test_the_proxy_listens_on_loopback_or_a_unix_socket_only(daemon_pki, tls_dockerd, tmp_path):
    _daemon, port = tls_dockerd
    base = ["daemon-proxy", "--upstream", f"tcp://127.0.0.1:{port}", "--cert-path", str(daemon_pki.tpm_dir)]
    for listen in ("tcp://0.0.0.0:2375", "tcp://192.0.2.1:2375", "10.0.0.1:2375", "tcp://[::]:2375"):
        line = one_line(tpmtls_cli(*base, "--listen", listen, env=daemon_pki.env, check=False))
        assert f"refusing to listen on {listen}" in line, line
    tcp_port = free_port()
    with ProxyProcess(tmp_path, daemon_pki.env, *base[1:], "--listen", f"tcp://127.0.0.1:{tcp_port}") as p:
        proc = run([DOCKER, "-H", f"tcp://127.0.0.1:{tcp_port}", "version", "--format", "{{.Server.Version}}"],
                   env={"DOCKER_CONFIG": str(tmp_path / "cfg")})
        assert proc.returncode == 0, proc.stderr + "\n".join(p.lines())
        # a web page whose name was rebound to 127.0.0.1 reaches the port too: refused before forwarding
        for extra in (b"Host: evil.example:2375\r\n", b"Host: 127.0.0.1\r\nOrigin: http://evil.example\r\n"):
            with socket.create_connection(("127.0.0.1", tcp_port), timeout=20) as s:
                s.sendall(b"GET /containers/json HTTP/1.1\r\n" + extra + b"\r\n")
                answer = s.recv(4096)
            assert b" 403 " in answer.split(b"\r\n", 1)[0] or b"refused" in answer, answer
    assert p.returncode == 0 and "stopped after 3 connections (1 resumed" in p.lines()[-1], p.lines()  # SIGTERM: clean stop


def test_bad_upstream_or_certificates_are_one_line_at_start(daemon_pki, tls_dockerd, tmp_path):
    _daemon, port = tls_dockerd
    sock = f"unix://{tmp_path}/p.sock"

    def fails(*args: str, cert_path: Path = daemon_pki.tpm_dir) -> str:
        return one_line(tpmtls_cli("daemon-proxy", "--listen", sock, "--cert-path", str(cert_path), *args,
                                   env=daemon_pki.env, check=False))

    assert "cannot connect" in fails("--upstream", f"tcp://127.0.0.1:{free_port()}")
    foreign = tmp_path / "foreign"
    shutil.copytree(daemon_pki.tpm_dir, foreign)
    for name in ("cert.pem", "key.pem"):
        shutil.copy(daemon_pki.foreign_dir / name, foreign / name)
    assert "refused our client certificate" in fails("--upstream", f"tcp://127.0.0.1:{port}", cert_path=foreign)
    missing = tmp_path / "missing"
    shutil.copytree(daemon_pki.tpm_dir, missing)
    (missing / "cert.pem").unlink()
    assert f"{missing / 'cert.pem'}: missing" in fails("--upstream", f"tcp://127.0.0.1:{port}", cert_path=missing)
    mismatched = tmp_path / "mismatched"
    shutil.copytree(daemon_pki.tpm_dir, mismatched)
    shutil.copy(daemon_pki.soft_dir / "cert.pem", mismatched / "cert.pem")
    assert "does not belong to the key" in fails("--upstream", f"tcp://127.0.0.1:{port}", cert_path=mismatched)
    # the daemon's plain unix socket is no TLS daemon: a plain-TCP stand-in is the proxy's own TCP side
    plain_port = free_port()
    with ProxyProcess(tmp_path, daemon_pki.env, "--upstream", f"tcp://127.0.0.1:{port}",
                      "--cert-path", str(daemon_pki.tpm_dir), "--listen", f"tcp://127.0.0.1:{plain_port}"):
        assert "does not speak TLS" in fails("--upstream", f"tcp://127.0.0.1:{plain_port}")
    assert not Path(sock[len("unix://"):]).exists()


def test_the_systemd_unit_runs_a_valid_daemon_proxy_command():
    from tpmtls.cli import build_parser

    unit = (ROOT / "helpers" / "tpmtls-daemon-proxy@.service").read_text()
    exec_start = next(ln for ln in unit.splitlines() if ln.startswith("ExecStart="))
    argv = exec_start.split("=", 1)[1].replace("%i", "docker1.example:2376").split()
    assert argv[0].endswith("/tpmtls")
    args = build_parser().parse_args(argv[1:])
    assert (args.upstream, args.listen, args.cert_path) == (
        "tcp://docker1.example:2376", "fd://", "/etc/tpmtls/docker/docker1.example:2376")
    socket_unit = (ROOT / "helpers" / "tpmtls-daemon-proxy@.socket").read_text()
    assert "ListenStream=/run/tpmtls/%i/docker.sock" in socket_unit.splitlines()


def test_a_refusal_after_start_reaches_the_cli_as_one_daemon_error(daemon_pki, tls_dockerd, tmp_path):
    """If the daemon stops accepting our certificate while the proxy runs, the CLI says why."""

    from tpmtls.docker.files import CertPath
    from tpmtls.docker.proxy import DaemonProxy

    _daemon, port = tls_dockerd
    foreign = tmp_path / "foreign"
    shutil.copytree(daemon_pki.tpm_dir, foreign)
    for name in ("cert.pem", "key.pem"):
        shutil.copy(daemon_pki.foreign_dir / name, foreign / name)
    lines: list[str] = []
    proxy = DaemonProxy(f"tcp://127.0.0.1:{port}", f"unix://{tmp_path}/r.sock", CertPath(foreign),
                        log=lines.append)  # no probe(): as if the daemon's CA changed after start
    with in_thread(proxy, join=10):
        proc = run([DOCKER, "-H", f"unix://{tmp_path}/r.sock", "version", "--format", "{{.Server.Version}}"],
                   env={"DOCKER_CONFIG": str(tmp_path / "cfg")})
    assert proc.returncode != 0
    assert "Error response from daemon: tpmtls daemon-proxy: tcp://127.0.0.1:" in proc.stderr
    assert "refused our client certificate" in proc.stderr
    assert any("refused our client certificate" in ln for ln in lines), lines
