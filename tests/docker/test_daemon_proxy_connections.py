"""How `tpmtls daemon-proxy` connections end, behind NGINX (which keeps its connections open
until told otherwise) and straight at dockerd: a finished or killed CLI releases its
connection and the upstream one at once, a half-closed one still gets its output, and idle
connections cannot take every slot. Real dockerd, real NGINX, the stock docker CLI."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pytest

from support.commands import require
from support.daemon import DOCKER, DaemonPki, busybox_archive, run, start_daemon, tpmtls_cli
from support.nginx import Nginx
from support.proxy import in_thread
from tpmtls.lab.process import child_env
from tpmtls.testing import free_port

IMAGE = "busybox-tpmtls:1"


@pytest.fixture(scope="module")
def stack(daemon_pki, tmp_path_factory):
    """dockerd (TLS port and unix socket) with busybox loaded, NGINX from `certs nginx-front` in
    front of the socket, and a container printing a line a second: {dockerd, tls, nginx, box}."""
    require("dockerd", "docker", "nginx")
    root = tmp_path_factory.mktemp("connections")
    daemon, tls_port = start_daemon(root, daemon_pki)
    with daemon:
        loaded = run([DOCKER, "load", "-i", str(busybox_archive(root / "busybox.tar"))], env=daemon.env)
        assert loaded.returncode == 0, loaded.stderr
        port = free_port()
        conf = root / "nginx.conf"
        tpmtls_cli("certs", "nginx-front", "--cert", str(daemon_pki.server_cert), "--key", str(daemon_pki.server_key),
                   "--ca", str(daemon_pki.ca), "--listen", f"127.0.0.1:{port}", "--socket", str(daemon.socket),
                   "--user", "root", "--out", str(conf), env=daemon_pki.env)
        box = run([DOCKER, "run", "-d", IMAGE, "sh", "-c", "while true; do echo tick; sleep 1; done"],
                  env=daemon.env).stdout.strip()
        with Nginx(root / "nginx", conf, port):
            yield {"dockerd": daemon, "tls": tls_port, "nginx": port, "box": box}
        run([DOCKER, "rm", "-f", box], env=daemon.env)


@contextmanager
def serving(daemon_pki: DaemonPki, upstream_port: int, tcti: str, listen: str) -> Iterator:
    """An in-process DaemonProxy; yields (proxy, log lines, the CLI's environment)."""

    from tpmtls.docker.files import CertPath
    from tpmtls.docker.proxy import DaemonProxy

    lines: list[str] = []
    proxy = DaemonProxy(f"tcp://127.0.0.1:{upstream_port}", listen, CertPath(daemon_pki.tpm_dir), tcti=tcti,
                        log=lines.append)
    proxy.probe()
    with in_thread(proxy):
        yield proxy, lines, {"DOCKER_HOST": proxy.bound, "DOCKER_CONFIG": "/nonexistent-docker-config"}


def listen_on(kind: str, tmp_path: Path) -> str:
    return f"unix://{tmp_path}/docker.sock" if kind == "unix" else f"tcp://127.0.0.1:{free_port()}"


def established_to(port: int) -> int:
    """Open TCP connections to 127.0.0.1:`port` on this machine (the proxy's upstream ones, here)."""
    count = 0
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[2] == f"0100007F:{port:04X}" and fields[3] == "01":
                count += 1
    return count


def settles(condition: Callable[[], bool], seconds: float = 20) -> bool:
    """`condition` becomes true within `seconds` (a bound for the test, not a measurement)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def released(proxy, upstream_port: int) -> bool:
    return settles(lambda: proxy.stats.active == 0 and established_to(upstream_port) == 0)


def test_eighty_quick_cli_calls_through_nginx_each_end_their_connection(stack, daemon_pki, test_tpm, tmp_path):
    """NGINX keeps an upstream connection until the client closes it: the proxy must close
    each one when its CLI is done, or 64 calls fill every slot for NGINX's 75 s."""
    with serving(daemon_pki, stack["nginx"], test_tpm.tcti, listen_on("unix", tmp_path)) as (proxy, lines, env):
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: run([DOCKER, "version", "--format", "{{.Server.APIVersion}}"],
                                                  env=env, timeout=60), range(80)))
        assert [r.returncode for r in results] == [0] * 80, [r.stderr for r in results if r.returncode]
        assert released(proxy, stack["nginx"]), (proxy.stats, lines[-3:])
    ended = [ln for ln in lines if ln.startswith("conn ")]
    assert len(ended) == proxy.stats.connections >= 80
    assert all("the client closed the connection" in ln for ln in ended), ended[:3]


def test_sixty_five_killed_streams_through_nginx_release_their_connections(stack, daemon_pki, test_tpm, tmp_path):
    """`docker events` and `docker logs -f` wait for data for ever; killed, they must not keep
    their slot (nor NGINX's upstream connection to dockerd)."""
    with serving(daemon_pki, stack["nginx"], test_tpm.tcti, listen_on("unix", tmp_path)) as (proxy, lines, env):
        streams = []
        try:
            for i in range(65):
                argv = [DOCKER, "events"] if i % 2 else [DOCKER, "logs", "-f", "--tail", "1", stack["box"]]
                streams.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                                env=child_env(env), start_new_session=True))
            assert settles(lambda: proxy.stats.active >= 65 and established_to(stack["nginx"]) >= 65, 90), \
                (proxy.stats, lines[-3:])
        finally:
            for p in streams:
                p.send_signal(signal.SIGKILL)
            for p in streams:
                p.wait(10)
        assert released(proxy, stack["nginx"]), (proxy.stats, lines[-3:])
        assert run([DOCKER, "version"], env=env, timeout=60).returncode == 0
    # the stream's client is gone: NGINX closed (or, with output unread, reset) its connection, or
    # the next output found it closed; whichever the proxy saw first
    gone = ("the client closed the connection", "the client reset the connection", "the client went away")
    assert sum(any(g in ln for g in gone) for ln in lines) >= 65, [ln for ln in lines if ln.startswith("conn ")][-5:]


def cats_in(stack) -> int:
    top = run([DOCKER, "top", stack["box"]], env=stack["dockerd"].env)
    assert top.returncode == 0, top.stderr
    return sum(line.split()[-1] == "cat" for line in top.stdout.splitlines()[1:])


@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_a_killed_interactive_exec_through_nginx_releases_its_upstream(stack, daemon_pki, test_tpm, tmp_path, kind):
    with serving(daemon_pki, stack["nginx"], test_tpm.tcti, listen_on(kind, tmp_path)) as (proxy, lines, env):
        cli = subprocess.Popen([DOCKER, "exec", "-i", stack["box"], "cat"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=child_env(env),
                               start_new_session=True)
        try:
            assert cli.stdin is not None and cli.stdout is not None
            cli.stdin.write(b"still here\n")
            cli.stdin.flush()
            assert cli.stdout.readline() == b"still here\n"
            assert cats_in(stack) == 1
        finally:
            cli.send_signal(signal.SIGKILL)
            cli.wait(10)
        assert released(proxy, stack["nginx"]), (proxy.stats, lines[-3:])
        # NGINX closed its side to dockerd: the exec's stdin ended, so `cat` is gone
        assert settles(lambda: cats_in(stack) == 0), lines[-3:]


@pytest.mark.parametrize("upstream", ["tls", "nginx"])
def test_a_half_closed_tcp_client_still_gets_its_output(stack, daemon_pki, test_tpm, tmp_path, upstream):
    """The CLI half-closes when its stdin ends (at once without stdin); on a loopback port that
    reads like a close, so the proxy asks the kernel whether the CLI still holds its socket."""
    with serving(daemon_pki, stack[upstream], test_tpm.tcti, listen_on("tcp", tmp_path)) as (proxy, lines, env):
        out = run([DOCKER, "run", "--rm", IMAGE, "sh", "-c", "sleep 2; echo after the half-close"], env=env)
        assert (out.returncode, out.stdout) == (0, "after the half-close\n"), out.stderr
        if upstream == "tls":  # dockerd reads the half-close as the end of stdin (NGINX cannot pass it on)
            out = run([DOCKER, "exec", "-i", stack["box"], "sh", "-c", "sleep 2; cat"], env=env, input="piped\n")
            assert (out.returncode, out.stdout) == (0, "piped\n"), out.stderr
        assert released(proxy, stack[upstream])


def test_idle_local_connections_cannot_take_every_slot(stack, daemon_pki, test_tpm, tmp_path):
    from tpmtls.docker.proxy import MAX_CONNECTIONS

    with serving(daemon_pki, stack["nginx"], test_tpm.tcti, listen_on("unix", tmp_path)) as (proxy, lines, env):
        idle = []
        try:
            for _ in range(MAX_CONNECTIONS + 72):
                s = socket.socket(socket.AF_UNIX)
                s.connect(str(tmp_path / "docker.sock"))
                idle.append(s)
            out = run([DOCKER, "version", "--format", "{{.Server.APIVersion}}"], env=env, timeout=60)
            assert out.returncode == 0, out.stderr
        finally:
            for s in idle:
                s.close()
        assert released(proxy, stack["nginx"])
    assert sum("a new connection needed its slot" in ln for ln in lines) >= 72
