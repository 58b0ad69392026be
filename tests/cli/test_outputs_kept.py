"""No silent replacement, nothing injected: outputs already there are refused without --force (key
material then kept as .bak), Docker's certs.d is never written, and an NGINX configuration takes
no value that could end a directive — while what is rendered passes `nginx -t`."""

from __future__ import annotations

import grp
import os
import socket
import subprocess
from pathlib import Path

import pytest

from support.commands import require


@pytest.fixture(scope="module")
def client(tpm, pki, tmp_path_factory):
    """A TPM key and its client certificate: (cert, key)."""
    d = tmp_path_factory.mktemp("client")
    key = tpm.create_key("ecc-p256", d / "tpm.key")
    return pki.issue(key.public_key(), "kept-client", "kept-client.crt"), d / "tpm.key"


def test_certs_env_keeps_a_cert_path_that_is_there(cli, client, pki, tmp_path):
    cert, key = client
    docker = tmp_path / ".docker"
    docker.mkdir()
    (docker / "key.pem").write_text("the user's own key\n")
    (docker / "config.json").write_text("{}\n")
    args = ("certs", "env", "docker.example:2376", "--cert-path", str(docker), "--cert", str(cert), "--key",
            str(key), "--ca", str(pki.ca_file))
    line = cli.fails(*args)
    assert "already holds key.pem" in line and "--force" in line
    assert sorted(p.name for p in docker.iterdir()) == ["config.json", "key.pem"]
    assert (docker / "key.pem").read_text() == "the user's own key\n"
    out = cli(*args, "--force").stdout
    assert f"DOCKER_CERT_PATH={docker}" in out
    assert sorted(p.name for p in docker.iterdir()) == [".tpmtls-renewal", "ca.pem", "cert.pem", "config.json", "key.pem",
                                                        "key.pem.bak"]  # the pointer: certs env notes the copy
    assert (docker / "key.pem.bak").read_text() == "the user's own key\n"
    assert (docker / "key.pem.bak").stat().st_mode & 0o777 == 0o600
    assert (docker / "key.pem").read_bytes() == key.read_bytes()
    cli(*args, "--force")  # again: the first backup stays, the next one gets its own name
    assert (docker / "key.pem.bak").read_text() == "the user's own key\n"
    assert (docker / "key.pem.bak.1").read_bytes() == key.read_bytes()


def test_certs_install_never_writes_dockers_certs_d(cli, client, pki, tmp_path):
    cert, key = client
    docker_root = tmp_path / "docker-certs.d"  # what $DOCKER_CERTS_D names: Docker's certs.d for this test
    line = cli.fails("certs", "install", "registry.example:5000", "--cert", str(cert), "--key", str(key), "--ca",
                     str(pki.ca_file), "--root", str(docker_root), env={"DOCKER_CERTS_D": str(docker_root)})
    assert "this is Docker's certs.d" in line and "/etc/tpmtls/certs.d" in line
    line = cli.fails("certs", "install", "registry.example:5000", "--cert", str(cert), "--key", str(key), "--ca",
                     str(pki.ca_file), "--root", "/etc/docker/certs.d")
    assert "this is Docker's certs.d" in line
    assert not docker_root.exists() and not Path("/etc/docker/certs.d/registry.example:5000").exists()


def nginx_front(cli, pki, tmp_path: Path, *extra: str, fails: bool = False):
    args = ("certs", "nginx-front", "--cert", str(pki.server_cert), "--key", str(pki.server_key), "--ca",
            str(pki.ca_file), "--listen", "127.0.0.1:2376", *extra)
    return cli.fails(*args) if fails else cli(*args)


@pytest.mark.parametrize("option, value", [
    ("--user", "root; load_module /tmp/evil.so"),
    ("--user", "root\nworker_processes 64"),
    ("--user", "a b c"),
    ("--socket", "/run/x.sock; } server { listen 80"),
    ("--socket", "/run/docker $sock"),
    ("--socket", "relative.sock"),
])
def test_nginx_front_takes_no_value_that_ends_a_directive(cli, pki, tmp_path, option, value):
    line = nginx_front(cli, pki, tmp_path, "--user", "root", option, value, "--out", "nginx.conf", fails=True)
    assert option in line
    assert not (tmp_path / "nginx.conf").exists()


def test_nginx_front_out_is_refused_when_there_and_replaced_with_force(cli, pki, tmp_path):
    (tmp_path / "nginx.conf").write_text("# the user's own\n")
    line = nginx_front(cli, pki, tmp_path, "--user", "root", "--out", "nginx.conf", fails=True)
    assert "already exists" in line and (tmp_path / "nginx.conf").read_text() == "# the user's own\n"
    nginx_front(cli, pki, tmp_path, "--user", "root", "--out", "nginx.conf", "--force")
    assert "ssl_verify_client" in (tmp_path / "nginx.conf").read_text()


def test_nginx_front_runs_workers_that_can_open_the_socket(cli, pki, tmp_path):
    """Without --user: nobody in the socket's group, which `nginx -t` accepts; no socket here, or one
    only root may open, and the command says to give --user instead of rendering workers that get 502s."""
    require("nginx")
    group = grp.getgrnam("daemon")  # a group every Debian system has
    sock = tmp_path / "docker.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(sock))
    try:
        os.chown(sock, 0, group.gr_gid)
        os.chmod(sock, 0o660)
        nginx_front(cli, pki, tmp_path, "--socket", str(sock), "--out", "nginx.conf")
        text = (tmp_path / "nginx.conf").read_text()
        assert "user nobody daemon;" in text
        (tmp_path / "logs").mkdir()
        checked = subprocess.run(["nginx", "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                                 capture_output=True, text=True, timeout=60)
        assert checked.returncode == 0, checked.stderr
        os.chown(sock, 0, 0)
        line = nginx_front(cli, pki, tmp_path, "--socket", str(sock), "--out", "other.conf", fails=True)
        assert "only root may open it" in line and "--user" in line
    finally:
        listener.close()
    line = nginx_front(cli, pki, tmp_path, "--socket", "/nonexistent/docker.sock", "--out", "third.conf", fails=True)
    assert "give --user" in line and "its group is unknown" in line
    assert not (tmp_path / "other.conf").exists() and not (tmp_path / "third.conf").exists()
