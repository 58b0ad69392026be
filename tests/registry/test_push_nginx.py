"""NGINX terminating mTLS in front of docker-registry: push and pull with TPM keys (ECC, RSA;
TLS 1.2 and 1.3), and its after-the-handshake refusals reported as what they are."""

from __future__ import annotations

import pytest

from support.commands import one_line, require
from support.nginx import registry_front
from support.peers import Pki
from support.registry import cert_dir, env_for, run_cli, tpm_cert_dir
from tpmtls.lab import Registry


@pytest.fixture(scope="module")
def plain_registry(pki, tmp_path_factory):
    require("docker-registry", "nginx")
    with Registry(pki.server_cert, pki.server_key, None, tmp_path_factory.mktemp("behind-nginx")) as reg:
        yield reg


@pytest.fixture(scope="module", params=["TLSv1.2", "TLSv1.3"])
def nginx(request, pki, plain_registry, tmp_path_factory):
    with registry_front(tmp_path_factory.mktemp("nginx"), pki.server_cert, pki.server_key, pki.ca_file,
                        plain_registry.port, protocols=request.param) as server:
        yield server


@pytest.mark.parametrize("alg", ["ecc-p256", "rsa2048"])
def test_push_and_pull_through_nginx(alg, nginx, pki, tpm, small_image, test_tpm, tmp_path):
    certs = tpm_cert_dir(tmp_path / "certs", pki, tpm, alg)
    env = env_for(test_tpm, tmp_path)
    dest = f"localhost:{nginx.port}/nginx-{alg}:1"
    pushed = run_cli("push", f"docker-archive:{small_image}", dest, "--cert-dir", str(certs), env=env)
    assert pushed.returncode == 0, pushed.stderr
    digest = pushed.stdout.splitlines()[-1].split()[2]
    pulled = run_cli("pull", dest, f"oci:{tmp_path / 'layout'}", "--cert-dir", str(certs), env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert f"Digest: {digest}" in pulled.stdout


def test_no_client_certificate_configured(nginx, pki, small_image, test_tpm, tmp_path):
    certs = cert_dir(tmp_path / "c", pki, None, None)
    line = one_line(run_cli("push", f"docker-archive:{small_image}", f"localhost:{nginx.port}/x:1",
                                    "--cert-dir", str(certs), env=env_for(test_tpm, tmp_path)))
    print(line)
    assert "requires a client certificate and none is configured" in line and "answered 400" not in line


def test_foreign_client_certificate(nginx, pki, small_image, test_tpm, tmp_path):
    stranger = Pki(tmp_path / "other", cn="not the registry's CA")
    cert, key = stranger.software_client("stranger")
    certs = cert_dir(tmp_path / "c", pki, cert, key)
    line = one_line(run_cli("pull", f"localhost:{nginx.port}/x:1", f"oci:{tmp_path / 'o'}",
                                    "--cert-dir", str(certs), env=env_for(test_tpm, tmp_path)))
    print(line)
    assert "refused our client certificate" in line and str(certs / "client.cert") in line
