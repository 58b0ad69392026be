"""`docker login` through `tpmtls proxy` to a token-auth registry behind mTLS, then push
and pull; the token realm (another host) is reached through the proxy, credentials pass through."""

from __future__ import annotations

import json

import pytest

from support.proxy import RegistryProxyProcess, docker
from support.tokens import PASSWORD, USER, registry_with_token_server


@pytest.fixture(scope="module")
def mtls_token_registry(pki, tmp_path_factory):
    with registry_with_token_server(pki, tmp_path_factory.mktemp("proxy-token")) as both:
        yield both


def test_docker_login_push_pull_through_the_proxy(mtls_token_registry, tpm_certs, dockerd, small_image, test_tpm,
                                                 tmp_path):
    reg, tokens = mtls_token_registry
    config = tmp_path / "docker-config"
    config.mkdir()
    with RegistryProxyProcess(tmp_path, test_tpm.env, "--upstream", f"localhost:{reg.port}", "--listen",
                              "127.0.0.1:0", "--cert-dir", str(tpm_certs)) as proxy:
        ref = f"{proxy.address}/authed/demo:1"
        denied = docker(dockerd.env, "login", proxy.address, "-u", USER, "--password-stdin", input="wrong\n",
                        check=False, config=config)
        assert denied.returncode != 0
        login = docker(dockerd.env, "login", proxy.address, "-u", USER, "--password-stdin", input=PASSWORD + "\n",
                       config=config)
        assert "Login Succeeded" in login.stdout
        assert proxy.address in json.loads((config / "config.json").read_text())["auths"]
        docker(dockerd.env, "load", "-i", str(small_image))
        docker(dockerd.env, "tag", "demo:1", ref)
        pushed = docker(dockerd.env, "push", ref, config=config).stdout
        digest = pushed.strip().splitlines()[-1].split("digest: ")[1].split()[0]
        docker(dockerd.env, "rmi", ref)
        assert f"Digest: {digest}" in docker(dockerd.env, "pull", ref, config=config).stdout
        docker(dockerd.env, "rmi", ref)
        # without the login the registry refuses, through the proxy as it would directly
        anonymous = docker(dockerd.env, "pull", ref, check=False, config=tmp_path / "no-config")
        assert anonymous.returncode != 0
    lines = proxy.lines()  # once it has stopped: each request's line is written after its answer
    realm_requests = [line for line in lines if " /_tpmtls/realm/localhost:" in line]
    assert any(" 200 " in line for line in realm_requests) and any(" 401 " in line for line in realm_requests)
    assert tokens.requests >= 3
    assert PASSWORD not in "\n".join(lines)


def test_plain_http_token_realm_gets_no_credentials(pki, tpm_certs, dockerd, test_tpm, tmp_path):
    """A realm in clear on another host: docker is pointed at the proxy, which refuses (403) and
    sends nothing on; the password never leaves the machine."""
    with registry_with_token_server(pki, tmp_path, realm="http://192.0.2.1/token") as (reg, _), \
            RegistryProxyProcess(tmp_path, test_tpm.env, "--upstream", f"localhost:{reg.port}", "--listen",
                                 "127.0.0.1:0", "--cert-dir", str(tpm_certs)) as proxy:
        login = docker(dockerd.env, "login", proxy.address, "-u", USER, "--password-stdin",
                       input=PASSWORD + "\n", check=False, config=tmp_path / "config")
    lines = proxy.lines()  # once it has stopped: each request's line is written after its answer
    assert login.returncode != 0
    assert any("token realm http://192.0.2.1/token is not https" in line for line in lines), lines
    assert any(line.split(": ", 1)[1].startswith("GET /_tpmtls/refused-realm 403 ") for line in lines if ": GET " in line)
    assert PASSWORD not in "\n".join(lines)
