"""The server's own name and certificate: `--public-url`, a non-loopback address, renewal while serving.

Before: with `--listen 0.0.0.0:P` the server advertised https://0.0.0.0:P/acme/… with only
IP:0.0.0.0 in a certificate made once at start for 30 days and never renewed.
The remote case runs the server in a network namespace of the test's own (a veth pair with
addresses from 198.18.0.0/15, the range set aside for test networks); the client stays in
this namespace and resolves the server's name through a private /etc/hosts (its own mount
namespace), so nothing on the machine changes.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest
import requests
from cryptography import x509

from support.attest import busy_limits, busy_settings, enroll_machine
from support.commands import Cli, require
from support.enroll_server import ServerProcess
from tpmtls.enroll.acme_server import EnrollApp, EnrollServer

NAME = "enroll.tpmtls.test"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    require("swtpm", "swtpm_setup", "swtpm_localca", "tpm2-abrmd")
    tmp = tmp_path_factory.mktemp("public")
    with enroll_machine(tmp) as m:
        yield tmp, m.machine, m.files


def served_certificate(host: str, port: int, cafile: str, name: str | None = None) -> x509.Certificate:
    ctx = ssl.create_default_context(cafile=cafile)
    with socket.create_connection((host, port), timeout=10) as raw, ctx.wrap_socket(raw, server_hostname=name or host) as s:
        return x509.load_der_x509_certificate(s.getpeercert(binary_form=True))


def test_wildcard_listen_needs_a_public_url(world, tmp_path):
    tmp, machine, (ca_dir, roots, policy) = world
    cli = Cli(machine.env, tmp_path)
    line = cli.fails("enroll-server", "--ca", str(ca_dir), "--ek-roots", str(roots), "--policy", str(policy),
                     "--listen", "0.0.0.0:0")
    assert "give --public-url https://NAME:PORT" in line
    line = cli.fails("enroll-server", "--ca", str(ca_dir), "--ek-roots", str(roots), "--policy", str(policy),
                     "--public-url", "http://x:1")
    assert "write it as https://NAME[:PORT]" in line


def test_certificate_is_renewed_while_serving_without_dropping_requests(world):
    tmp, _, files = world
    offset = [0.0]

    def clock() -> float:
        return time.time() + offset[0]

    app = EnrollApp(*files, db=f"sqlite:{tmp / 'renew.db'}", settings=busy_settings(), clock=clock)
    cafile = str(files[0] / "ca.crt")
    with EnrollServer(app, limits=busy_limits(renew_check_seconds=0.2)) as srv:
        before = served_certificate("127.0.0.1", srv.port, cafile)
        lifetime = before.not_valid_after_utc - before.not_valid_before_utc
        assert 29 <= lifetime.days <= 30
        kept = requests.Session()  # a kept-alive connection across the renewal
        assert kept.get(srv.directory_url, verify=cafile, timeout=10).status_code == 200
        failures: list[str] = []
        done = threading.Event()

        def traffic() -> None:
            s = requests.Session()
            for _ in range(2000):  # bounded; ends when the renewal has been seen
                if done.is_set():
                    return
                try:
                    if s.get(srv.directory_url, verify=cafile, timeout=10).status_code != 200:
                        failures.append("status")
                except requests.RequestException as e:
                    failures.append(type(e).__name__)

        t = threading.Thread(target=traffic)
        t.start()
        offset[0] = 21 * 86400.0  # past two thirds of 30 days, by the server's clock
        for _ in range(300):  # the server's own timer notices within its 0.2 s check period
            if srv.certificate.renewals:
                break
            time.sleep(0.05)
        done.set()
        t.join(30)
        after = served_certificate("127.0.0.1", srv.port, cafile)
        assert srv.certificate.renewals == 1
        assert after.serial_number != before.serial_number and after.public_key() != before.public_key()
        assert kept.get(srv.directory_url, verify=cafile, timeout=10).status_code == 200
        assert failures == []
        assert srv.renew_certificate() is False  # not due again
    app.close()


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


@pytest.fixture
def netns():
    """A network namespace and a veth pair of this test's own, removed by name afterwards."""
    require("ip", "unshare", "mount")
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    tag = os.getpid() % 60000
    ns, host_if, ns_if = f"tpmtls-e{tag}", f"tpe{tag}h", f"tpe{tag}n"
    subnet = f"198.18.{tag % 250}"
    _ip("netns", "del", ns, check=False)
    _ip("link", "del", host_if, check=False)
    try:
        _ip("netns", "add", ns)
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", ns)
        _ip("addr", "add", f"{subnet}.1/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("netns", "exec", ns, "ip", "addr", "add", f"{subnet}.2/30", "dev", ns_if)
        _ip("netns", "exec", ns, "ip", "link", "set", ns_if, "up")
        _ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield ns, f"{subnet}.2"
    finally:
        _ip("netns", "del", ns, check=False)
        _ip("link", "del", host_if, check=False)


def test_server_on_a_remote_address_with_a_public_name(world, netns, tmp_path):
    tmp, machine, (ca_dir, roots, policy) = world
    ns, address = netns
    port = 8443
    server = ServerProcess(machine.env, tmp, "--ca", str(ca_dir), "--ek-roots", str(roots), "--policy", str(policy),
                           "--db", f"sqlite:{tmp_path / 'remote.db'}", "--public-url", f"https://{NAME}:{port}",
                           listen=f"0.0.0.0:{port}", prefix=("ip", "netns", "exec", ns))
    try:
        assert server.directory == f"https://{NAME}:{port}/acme/directory"
        cert = served_certificate(address, port, str(ca_dir / "ca.crt"), NAME)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.DNSName) == [NAME]
        hosts = tmp_path / "hosts"
        hosts.write_text(f"127.0.0.1 localhost\n{address} {NAME}\n")
        env = {**os.environ, **machine.env}
        env.pop("OPENSSL_CONF", None)
        proc = subprocess.run(
            [shutil.which("unshare") or "unshare", "--mount", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"',
             str(hosts), sys.executable, "-m", "tpmtls", "enroll", "--acme", server.directory,
             "--cafile", str(ca_dir / "ca.crt"), "--key-out", str(tmp_path / "k"), "--cert-out", str(tmp_path / "c")],
            capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("enrolled urn:ek:sha256:"), proc.stdout
    finally:
        assert server.stop() == 0, server.log.read_text()
    assert "Traceback" not in server.log.read_text()
