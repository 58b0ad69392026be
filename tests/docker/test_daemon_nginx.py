"""An NGINX front for docker.sock without socat: NGINX from `tpmtls certs nginx-front` terminating mTLS in front of a
real dockerd's socket; docker-py with the TPM key and the stock CLI via daemon-proxy through it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import pytest

from support import ROOT
from support.commands import one_line, require
from support.daemon import (
    DOCKER,
    DaemonPki,
    ProxyProcess,
    run,
    tpmtls_cli,
)
from support.nginx import Nginx
from tpmtls.lab.process import child_env
from tpmtls.testing import free_port

IMAGE = "busybox-tpmtls:1"
HELPERS = ROOT / "helpers" / "docker-front"


@pytest.fixture(scope="module")
def front(daemon_pki, tls_dockerd, busybox_image, tmp_path_factory):
    """NGINX on a loopback port in front of `tls_dockerd`'s unix socket."""
    require("nginx", "curl")
    root = tmp_path_factory.mktemp("front")
    port = free_port()
    conf = root / "nginx.conf"
    tpmtls_cli("certs", "nginx-front", "--cert", str(daemon_pki.server_cert), "--key", str(daemon_pki.server_key),
               "--ca", str(daemon_pki.ca), "--listen", f"127.0.0.1:{port}", "--socket", str(tls_dockerd.dockerd.socket),
               "--user", "root", "--out", str(conf), env=daemon_pki.env)
    with Nginx(root / "nginx", conf, port):
        yield port


def curl(port: int, daemon_pki: DaemonPki, *extra: str) -> tuple[str, str]:
    proc = run(["curl", "-sS", "--cacert", str(daemon_pki.ca), "-o", "-", "-w", "\n%{http_code}", *extra,
                f"https://127.0.0.1:{port}/_ping"])
    assert proc.returncode == 0, proc.stderr
    body, _, code = proc.stdout.rpartition("\n")
    return code, body


def test_curl_needs_a_client_certificate_from_the_ca(front, daemon_pki):
    code, body = curl(front, daemon_pki)
    assert code == "400" and "No required SSL certificate was sent" in body
    code, body = curl(front, daemon_pki, "--cert", str(daemon_pki.foreign_dir / "cert.pem"), "--key",
                      str(daemon_pki.foreign_dir / "key.pem"))
    assert code == "400" and "SSL certificate error" in body
    assert curl(front, daemon_pki, "--cert", str(daemon_pki.soft_dir / "cert.pem"), "--key",
                str(daemon_pki.soft_dir / "key.pem")) == ("200", "OK")


def test_docker_py_with_the_tpm_key_through_nginx(front, daemon_pki, tmp_path):
    script = tmp_path / "through_nginx.py"
    script.write_text(textwrap.dedent(f"""
        from tpmtls.docker.client import docker_client
        client = docker_client()
        print(client.version()["ApiVersion"])
        print("{IMAGE}" in [t for i in client.images.list() for t in i.tags])
        print(client.containers.run("{IMAGE}", ["echo", "via nginx"], remove=True).decode().strip())
        box = client.containers.run("{IMAGE}", ["sleep", "60"], detach=True)
        try:
            r = box.exec_run(["sh", "-c", "echo hijacked through nginx"])
            print(r.exit_code, r.output.decode().strip())
        finally:
            box.remove(force=True)
        client.close()
    """))
    env = {**daemon_pki.env, "DOCKER_HOST": f"tcp://127.0.0.1:{front}", "DOCKER_TLS_VERIFY": "1",
           "DOCKER_CERT_PATH": str(daemon_pki.tpm_dir), "HOME": str(tmp_path)}
    proc = run([sys.executable, str(script)], env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    api, listed, ran, execd = proc.stdout.splitlines()
    assert api.startswith("1.") and listed == "True" and ran == "via nginx" and execd == "0 hijacked through nginx"


def test_docker_client_names_the_refusal_by_nginx(front, daemon_pki, tmp_path, monkeypatch):
    from tpmtls.docker.client import docker_client
    from tpmtls.errors import TpmtlsError

    foreign = tmp_path / "foreign"
    shutil.copytree(daemon_pki.tpm_dir, foreign)
    for name in ("cert.pem", "key.pem"):
        shutil.copy(daemon_pki.foreign_dir / name, foreign / name)
    monkeypatch.setenv("TPMTLS_TCTI", daemon_pki.env["TPMTLS_TCTI"])
    with pytest.raises(TpmtlsError) as e:
        docker_client(f"tcp://127.0.0.1:{front}", cert_path=foreign)
    assert "refused our client certificate" in str(e.value) and "\n" not in str(e.value)


def test_stock_cli_via_daemon_proxy_through_nginx(front, daemon_pki, tmp_path):
    sock = tmp_path / "p" / "docker.sock"
    with ProxyProcess(tmp_path, daemon_pki.env, "--upstream", f"tcp://127.0.0.1:{front}", "--listen", f"unix://{sock}",
                      "--cert-path", str(daemon_pki.tpm_dir)) as proxy:
        env = {"DOCKER_HOST": f"unix://{sock}", "DOCKER_CONFIG": str(tmp_path / "cfg")}

        def docker(*args: str, input: str | None = None) -> str:
            proc = run([DOCKER, *args], env=env, input=input)
            assert proc.returncode == 0, f"docker {' '.join(args)}: {proc.stderr}\n" + "\n".join(proxy.lines())
            return proc.stdout

        assert docker("version", "--format", "{{.Server.APIVersion}}").startswith("1.")
        assert docker("run", "--rm", IMAGE, "echo", "cli via nginx") == "cli via nginx\n"
        docker("run", "-d", "--name", "nginxbox", IMAGE, "sleep", "120")
        try:
            p = subprocess.Popen([DOCKER, "exec", "-i", "nginxbox", "sh", "-c", "read a; echo got: $a; read b"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=child_env(env))
            assert p.stdin is not None and p.stdout is not None
            p.stdin.write("hijacked stdin\n")
            p.stdin.flush()
            assert p.stdout.readline() == "got: hijacked stdin\n"
            _out, err = p.communicate("bye\n", timeout=60)
            assert p.returncode == 0, err
        finally:
            docker("rm", "-f", "nginxbox")


def test_nginx_front_refuses_bad_input(daemon_pki, tmp_path):
    base = ["certs", "nginx-front", "--ca", str(daemon_pki.ca)]
    line = one_line(tpmtls_cli(*base, "--cert", str(daemon_pki.tpm_cert), "--key", str(daemon_pki.tpm_key), env=daemon_pki.env,
                               check=False))
    assert "not a server certificate" in line
    line = one_line(tpmtls_cli(*base, "--cert", str(daemon_pki.server_cert), "--key", str(daemon_pki.server_key),
                               "--listen", "10.9.8.7:443", env=daemon_pki.env, check=False))
    assert "no subjectAltName for 10.9.8.7" in line
    line = one_line(tpmtls_cli(*base, "--cert", str(daemon_pki.server_cert), "--key", str(daemon_pki.server_key),
                               "--socket", "docker.sock", env=daemon_pki.env, check=False))
    assert "absolute path" in line


def test_the_compose_files_config_is_the_commands_rendering():
    from tpmtls.docker.nginx import render_nginx_front

    expected = render_nginx_front(cert="/etc/nginx/certs/server-cert.pem", key="/etc/nginx/certs/server-key.pem",
                                  ca="/etc/nginx/certs/ca.pem", listen="2376", socket="/var/run/docker.sock",
                                  user="root")
    assert (HELPERS / "nginx.conf").read_text() == expected
    compose = (HELPERS / "docker-compose.yaml").read_text()
    assert "alpine/socat" not in compose and "/var/run/docker.sock:/var/run/docker.sock" in compose
