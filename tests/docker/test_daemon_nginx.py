"""An NGINX front for docker.sock without socat: NGINX from `tpmtls certs nginx-front` terminating mTLS in front of a
real dockerd's socket; docker-py with the TPM key and the stock CLI via daemon-proxy through it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import pytest

from support import ROOT
from support.commands import require
from support.daemon import (
    DOCKER,
    DaemonPki,
    Nginx,
    ProxyProcess,
    busybox_archive,
    one_line,
    run,
    start_daemon,
    tpmtls_cli,
)
from support.peers import clean_env
from tpmtls.testing import free_port

IMAGE = "busybox-tpmtls:1"
HELPERS = ROOT / "helpers" / "docker-front"


@pytest.fixture(scope="module")
def dpki(test_tpm, tmp_path_factory):
    require("openssl")
    return DaemonPki(tmp_path_factory.mktemp("dpki"), test_tpm.env).with_tpm_cert_path()


@pytest.fixture(scope="module")
def front(dpki, tmp_path_factory):
    """dockerd (its unix socket is what NGINX proxies to) and NGINX on a loopback port."""
    require("dockerd", "docker", "nginx", "curl")
    root = tmp_path_factory.mktemp("front")
    daemon, _tls_port = start_daemon(root, dpki)
    with daemon:
        loaded = run([DOCKER, "load", "-i", str(busybox_archive(root / "busybox.tar"))], env=daemon.local_env)
        assert loaded.returncode == 0, loaded.stderr
        port = free_port()
        conf = root / "nginx.conf"
        tpmtls_cli("certs", "nginx-front", "--cert", str(dpki.server_cert), "--key", str(dpki.server_key),
                   "--ca", str(dpki.ca), "--listen", f"127.0.0.1:{port}", "--socket", str(daemon.socket),
                   "--user", "root", "--out", str(conf), env=dpki.env)
        with Nginx(root / "nginx", conf, port):
            yield port


def curl(port: int, dpki: DaemonPki, *extra: str) -> tuple[str, str]:
    proc = run(["curl", "-sS", "--cacert", str(dpki.ca), "-o", "-", "-w", "\n%{http_code}", *extra,
                f"https://127.0.0.1:{port}/_ping"])
    assert proc.returncode == 0, proc.stderr
    body, _, code = proc.stdout.rpartition("\n")
    return code, body


def test_curl_needs_a_client_certificate_from_the_ca(front, dpki):
    code, body = curl(front, dpki)
    assert code == "400" and "No required SSL certificate was sent" in body
    code, body = curl(front, dpki, "--cert", str(dpki.foreign_dir / "cert.pem"), "--key",
                      str(dpki.foreign_dir / "key.pem"))
    assert code == "400" and "SSL certificate error" in body
    assert curl(front, dpki, "--cert", str(dpki.soft_dir / "cert.pem"), "--key",
                str(dpki.soft_dir / "key.pem")) == ("200", "OK")


def test_docker_py_with_the_tpm_key_through_nginx(front, dpki, tmp_path):
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
    env = {**dpki.env, "DOCKER_HOST": f"tcp://127.0.0.1:{front}", "DOCKER_TLS_VERIFY": "1",
           "DOCKER_CERT_PATH": str(dpki.tpm_dir), "HOME": str(tmp_path)}
    proc = run([sys.executable, str(script)], env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    api, listed, ran, execd = proc.stdout.splitlines()
    assert api.startswith("1.") and listed == "True" and ran == "via nginx" and execd == "0 hijacked through nginx"


def test_docker_client_names_the_refusal_by_nginx(front, dpki, tmp_path, monkeypatch):
    from tpmtls.docker.client import docker_client
    from tpmtls.errors import TpmtlsError

    foreign = tmp_path / "foreign"
    shutil.copytree(dpki.tpm_dir, foreign)
    for name in ("cert.pem", "key.pem"):
        shutil.copy(dpki.foreign_dir / name, foreign / name)
    monkeypatch.setenv("TPMTLS_TCTI", dpki.env["TPMTLS_TCTI"])
    with pytest.raises(TpmtlsError) as e:
        docker_client(f"tcp://127.0.0.1:{front}", cert_path=foreign)
    assert "refused our client certificate" in str(e.value) and "\n" not in str(e.value)


def test_stock_cli_via_daemon_proxy_through_nginx(front, dpki, tmp_path):
    sock = tmp_path / "p" / "docker.sock"
    with ProxyProcess(tmp_path, dpki.env, "--upstream", f"tcp://127.0.0.1:{front}", "--listen", f"unix://{sock}",
                      "--cert-path", str(dpki.tpm_dir)) as proxy:
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
                                 env=clean_env(env))
            assert p.stdin is not None and p.stdout is not None
            p.stdin.write("hijacked stdin\n")
            p.stdin.flush()
            assert p.stdout.readline() == "got: hijacked stdin\n"
            _out, err = p.communicate("bye\n", timeout=60)
            assert p.returncode == 0, err
        finally:
            docker("rm", "-f", "nginxbox")


def test_nginx_front_refuses_bad_input(dpki, tmp_path):
    base = ["certs", "nginx-front", "--ca", str(dpki.ca)]
    line = one_line(tpmtls_cli(*base, "--cert", str(dpki.tpm_cert), "--key", str(dpki.tpm_key), env=dpki.env,
                               check=False))
    assert "not a server certificate" in line
    line = one_line(tpmtls_cli(*base, "--cert", str(dpki.server_cert), "--key", str(dpki.server_key),
                               "--listen", "10.9.8.7:443", env=dpki.env, check=False))
    assert "no subjectAltName for 10.9.8.7" in line
    line = one_line(tpmtls_cli(*base, "--cert", str(dpki.server_cert), "--key", str(dpki.server_key),
                               "--socket", "docker.sock", env=dpki.env, check=False))
    assert "absolute path" in line


def test_the_compose_files_config_is_the_commands_rendering():
    from tpmtls.docker.nginx import render_nginx_front

    expected = render_nginx_front(cert="/etc/nginx/certs/server-cert.pem", key="/etc/nginx/certs/server-key.pem",
                                  ca="/etc/nginx/certs/ca.pem", listen="2376", socket="/var/run/docker.sock",
                                  user="root")
    assert (HELPERS / "nginx.conf").read_text() == expected
    compose = (HELPERS / "docker-compose.yaml").read_text()
    assert "alpine/socat" not in compose and "/var/run/docker.sock:/var/run/docker.sock" in compose
