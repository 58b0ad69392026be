"""Issue 13 items 1-2: `tpmtls proxy` lets a stock dockerd push and pull through the TPM key."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from conftest import require
from proxy_env import RegistryProxyProcess, docker, hosts_entry, unique_name
from registry_env import skopeo_raw

LOG_LINE = r"^\d\d:\d\d:\d\d tpmtls proxy: (GET|HEAD|POST|PUT|PATCH|DELETE) /\S* \d{3} up=\d+ down=\d+ \d+ms"


@pytest.fixture(scope="module")
def loaded(dockerd, small_image):
    """A multi-layer image loaded into the private dockerd as demo:1."""
    docker(dockerd.env, "load", "-i", str(small_image))
    return "demo:1"


@pytest.fixture(scope="module")
def proxy(registry, tpm_certs, test_tpm, tmp_path_factory):
    require("docker-registry")
    work = tmp_path_factory.mktemp("proxy")
    with RegistryProxyProcess(work, test_tpm.env, "--upstream", f"localhost:{registry.port}", "--listen",
                              "127.0.0.1:0", "--cert-dir", str(tpm_certs)) as p:
        yield p


def _listen_refused(cli, listen: str, tpm_certs) -> str:
    line = cli.fails("proxy", "--upstream", "localhost:5000", "--listen", listen, "--cert-dir", str(tpm_certs))
    assert "refusing to listen" in line and listen in line, line
    return line


@pytest.mark.parametrize("listen", ["0.0.0.0:5000", "10.0.0.1:5000", "[::]:5000"])
def test_listen_outside_loopback_is_refused(listen, cli, tpm_certs):
    _listen_refused(cli, listen, tpm_certs)


def test_listen_on_a_name_resolving_off_loopback_is_refused(cli, tpm_certs):
    with hosts_entry(unique_name("off-loopback"), "10.0.0.1") as name:
        line = _listen_refused(cli, f"{name}:5000", tpm_certs)
    assert "10.0.0.1" in line


def test_push_rmi_pull_through_the_proxy(proxy, loaded, dockerd, registry, soft_certs):
    ref = f"{proxy.address}/demo:1"
    docker(dockerd.env, "tag", loaded, ref)
    pushed = docker(dockerd.env, "push", ref).stdout
    digest = pushed.strip().splitlines()[-1].split("digest: ")[1].split()[0]
    docker(dockerd.env, "rmi", ref, loaded)
    pulled = docker(dockerd.env, "pull", ref).stdout
    assert f"Digest: {digest}" in pulled
    _, upstream_digest = skopeo_raw(f"localhost:{registry.port}/demo:1", soft_certs)
    assert upstream_digest == digest
    requests = [line for line in proxy.lines() if " up=" in line]
    assert requests and all(re.match(LOG_LINE, line) for line in requests), requests[:5]
    assert any(" PUT /v2/demo/manifests/1 201 " in line for line in requests)
    status = proxy.status()
    assert status["requests"] >= len(requests) and status["bytes_up"] > 2_000_000 and status["bytes_down"] > 2_000_000
    # connections are pooled and resumed: the TPM signs once per full handshake, not per request
    assert 1 <= status["tpm_signatures"] <= status["full_handshakes"] < status["requests"]
    docker(dockerd.env, "tag", ref, loaded)


def test_untrusted_key_fails_and_the_refusal_is_logged(registry, dockerd, loaded, pki, tpm, test_tpm, tmp_path):
    from peers import Pki
    from registry_env import tpm_cert_dir

    foreign = tpm_cert_dir(tmp_path / "foreign", Pki(tmp_path / "other-ca", "some other CA"), tpm)
    shutil.copy(pki.ca_file, foreign / "ca.crt")  # we trust the registry; it does not trust our issuer
    with RegistryProxyProcess(tmp_path, test_tpm.env, "--upstream", f"localhost:{registry.port}", "--listen",
                              "127.0.0.1:0", "--cert-dir", str(foreign)) as p:
        pulled = docker(dockerd.env, "pull", f"{p.address}/demo:1", check=False)
        lines = p.lines()
    assert pulled.returncode != 0
    refusals = [line for line in lines if "refused our client certificate" in line]
    assert refusals, lines
    assert all(line.count("\n") == 0 and str(foreign / "client.cert") in line for line in refusals)
    print(pulled.stderr.strip(), refusals[-1], sep="\n")


def test_registry_own_name_mapped_to_loopback(pki, dockerd, loaded, tpm_certs, test_tpm, soft_certs, tmp_path):
    """`docker push NAME:PORT/demo:1` with NAME → 127.0.0.2 in /etc/hosts; the proxy listens on
    127.0.0.2:PORT and reaches the real registry (127.0.0.1:PORT) with --resolve."""
    require("docker-registry")
    from tpmtls.testing import Registry

    name = unique_name()
    server_cert = pki.issue(_server_key(pki).public_key(), name, f"{name}.crt", server=True)  # SAN: the name
    with Registry(server_cert, pki.dir / "own-name.key", pki.ca_file, tmp_path / "reg") as reg, \
            hosts_entry(name, "127.0.0.2"):
        hostport = f"{name}:{reg.port}"
        certs = tmp_path / "certs"
        shutil.copytree(tpm_certs, certs)
        with RegistryProxyProcess(tmp_path, test_tpm.env, "--upstream", hostport, "--listen", f"127.0.0.2:{reg.port}",
                                  "--cert-dir", str(certs), "--resolve", f"{hostport}:127.0.0.1"):
            ref = f"{hostport}/demo:1"
            docker(dockerd.env, "tag", loaded, ref)
            digest = docker(dockerd.env, "push", ref).stdout.strip().splitlines()[-1].split("digest: ")[1].split()[0]
            docker(dockerd.env, "rmi", ref)
            assert f"Digest: {digest}" in docker(dockerd.env, "pull", ref).stdout
            docker(dockerd.env, "rmi", ref)
        _, upstream_digest = skopeo_raw(f"127.0.0.1:{reg.port}/demo:1", soft_certs)
    assert upstream_digest == digest
    assert name not in Path("/etc/hosts").read_text()


def _server_key(pki):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    (pki.dir / "own-name.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                             serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()))
    return key


def test_cli_needs_a_client_certificate(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    line = cli.fails("proxy", "--upstream", "localhost:5000", "--listen", "127.0.0.1:0", "--cert-dir", "empty")
    assert "no client certificate" in line and "empty" in line
