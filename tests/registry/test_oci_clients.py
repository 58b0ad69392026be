"""containerd (ctr and the CRI plugin kubelet uses), podman, buildah and skopeo through `tpmtls proxy`,
configured by the files `tpmtls certs containerd-hosts` / `registries-conf` write.

The registry has a name of its own (`reg-….tpmtls.test`) that resolves nowhere: a tool that
reaches it did so through the configuration under test. Every digest is compared with a direct
`skopeo inspect --raw` of the registry with a software key.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.commands import require
from support.oci import CriError, cri_pull, podman_digest
from support.proxy import RegistryProxyProcess, unique_name
from support.registry import skopeo_raw

REFUSED = "refused our client certificate"


@dataclass(frozen=True)
class NamedRegistry:
    name: str  # REG:PORT, as image names say it
    address: str  # 127.0.0.1:PORT, where it really listens


@pytest.fixture(scope="module")
def named_registry(pki, tmp_path_factory):
    """docker-registry requiring client certificates, with a server certificate for a name nothing resolves."""
    require("docker-registry", "skopeo")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from tpmtls.lab import Registry

    name = unique_name("oci")
    work = tmp_path_factory.mktemp("oci-registry")
    key = ec.generate_private_key(ec.SECP256R1())
    (work / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
    cert = pki.issue(key.public_key(), name, f"{name}.crt", server=True)
    with Registry(cert, work / "server.key", pki.ca_file, work / "registry") as reg:
        yield NamedRegistry(f"{name}:{reg.port}", reg.address)


@pytest.fixture(scope="module")
def demo(named_registry, small_image, soft_certs):
    """demo:1 pushed directly with a software key; its manifest digest."""
    import subprocess

    from tpmtls.lab.process import child_env

    proc = subprocess.run(["skopeo", "copy", "--insecure-policy", "--dest-cert-dir", str(soft_certs),
                           f"docker-archive:{small_image}", f"docker://{named_registry.address}/demo:1"],
                          capture_output=True, text=True, env=child_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    return skopeo_raw(f"{named_registry.address}/demo:1", soft_certs)[1]


def _proxy(registry, cert_dir: Path, test_tpm, work: Path) -> RegistryProxyProcess:
    return RegistryProxyProcess(work, test_tpm.env, "--upstream", registry.name, "--listen", "127.0.0.1:0",
                                "--cert-dir", str(cert_dir), "--resolve", f"{registry.name}:127.0.0.1")


@pytest.fixture(scope="module")
def proxy(named_registry, tpm_certs, test_tpm, tmp_path_factory):
    with _proxy(named_registry, tpm_certs, test_tpm, tmp_path_factory.mktemp("oci-proxy")) as p:
        yield p


@pytest.fixture(scope="module")
def foreign_proxy(named_registry, pki, tpm, test_tpm, tmp_path_factory):
    """A proxy whose TPM key has a certificate from a CA the registry does not trust."""
    from support.peers import Pki
    from support.registry import tpm_cert_dir

    work = tmp_path_factory.mktemp("oci-foreign")
    certs = tpm_cert_dir(work / "foreign", Pki(work / "other-ca", "some other CA"), tpm)
    shutil.copy(pki.ca_file, certs / "ca.crt")  # we trust the registry; it does not trust our issuer
    with _proxy(named_registry, certs, test_tpm, work) as p:
        yield p


@pytest.fixture(scope="module")
def containerd(tmp_path_factory):
    require("containerd", "ctr")
    from tpmtls.lab.containerd import Containerd

    work = tmp_path_factory.mktemp("containerd")
    (work / "certs.d").mkdir()
    with Containerd(work / "certs.d", work / "daemon") as c:
        yield c


@pytest.fixture
def tools(tmp_path):
    from tpmtls.lab.containers import ContainersTools

    with ContainersTools(tmp_path / "containers") as t:
        yield t


def _containerd_hosts(cli, registry_name: str, proxy, hosts: Path) -> Path:
    """hosts.toml for the registry, written by `tpmtls certs containerd-hosts` as a user would."""
    hosts.mkdir(exist_ok=True)
    cli("certs", "containerd-hosts", registry_name, "--proxy", proxy.address, "--dir", str(hosts), "--force")
    return hosts


def _dropin(cli, tools, registry_name: str, proxy) -> Path:
    """The registries.conf.d drop-in, written by `tpmtls certs registries-conf` where the tools read drop-ins."""
    out = tools.dropin_dir / "90-tpmtls.conf"
    cli("certs", "registries-conf", registry_name, "--proxy", proxy.address, "--out", str(out), "--force")
    return out


def _requests(proxy, method: str, path_part: str) -> list[str]:
    return [line for line in proxy.lines() if f" {method} " in line and path_part in line]


# ---- containerd ----------------------------------------------------------------------------------


def test_ctr_pulls_and_pushes_by_the_registry_name(cli, containerd, named_registry, demo, proxy, soft_certs, tmp_path):
    hosts = _containerd_hosts(cli, named_registry.name, proxy, tmp_path / "certs.d")
    ref = f"{named_registry.name}/demo:1"
    containerd.ctr("image", "pull", "--hosts-dir", str(hosts), "--snapshotter", "native", ref)
    assert containerd.image_digest(ref) == demo
    pushed = f"{named_registry.name}/from-ctr:1"
    containerd.ctr("image", "tag", "--force", ref, pushed)
    containerd.ctr("image", "push", "--hosts-dir", str(hosts), pushed)
    assert skopeo_raw(f"{named_registry.address}/from-ctr:1", soft_certs)[1] == demo
    assert _requests(proxy, "PUT", "/v2/from-ctr/manifests/1 201")
    containerd.ctr("image", "rm", ref, pushed)


def test_kubelet_pull_through_the_cri_plugin_config_path(cli, containerd, named_registry, demo, proxy):
    """containerd's CRI plugin (what kubelet calls) reads hosts.toml from its config_path."""
    require("containerd")
    from tpmtls.lab.containerd import CRI_NAMESPACE

    _containerd_hosts(cli, named_registry.name, proxy, containerd.hosts_dir)
    ref = f"{named_registry.name}/demo:1"
    image_id = cri_pull(str(containerd.socket), ref)
    assert image_id.startswith("sha256:")
    assert containerd.image_digest(ref, namespace=CRI_NAMESPACE) == demo
    assert _requests(proxy, "GET", f"/v2/demo/manifests/{demo} 200")


def test_kubelet_pull_secret_answers_the_token_challenge_through_the_proxy(cli, containerd, tools, pki, tpm_certs,
                                                                          small_image, test_tpm, tmp_path):
    """imagePullSecrets: kubelet hands the credentials to containerd in PullImage's AuthConfig; containerd
    fetches a token at the realm the proxy rewrote to itself; the password crosses loopback, then TLS."""
    require("podman")
    from support.tokens import PASSWORD, USER, registry_with_token_server
    from tpmtls.lab.containerd import CRI_NAMESPACE

    (tmp_path / "tokens").mkdir()
    with registry_with_token_server(pki, tmp_path / "tokens") as (reg, tokens), \
            _proxy(NamedRegistry(f"localhost:{reg.port}", reg.address), tpm_certs, test_tpm, tmp_path) as proxy:
        name = f"localhost:{reg.port}"
        _dropin(cli, tools, name, proxy)
        tools.podman("load", "-i", str(small_image))
        digest_file = tmp_path / "digest"
        tools.podman("push", "--signature-policy", str(tools.policy), "--creds", f"{USER}:{PASSWORD}",
                     "--digestfile", str(digest_file), "demo:1", f"{proxy.address}/authed/demo:1")
        _containerd_hosts(cli, name, proxy, containerd.hosts_dir)
        with pytest.raises(CriError, match="401|nauthorized"):
            cri_pull(str(containerd.socket), f"{name}/authed/demo:1")  # no pull secret: refused
        cri_pull(str(containerd.socket), f"{name}/authed/demo:1", auth=(USER, PASSWORD))
        lines = proxy.lines()
    assert containerd.image_digest(f"{name}/authed/demo:1", namespace=CRI_NAMESPACE) == digest_file.read_text().strip()
    assert any("/_tpmtls/realm/localhost:" in line and " 200 " in line for line in lines)
    assert tokens.requests >= 2 and PASSWORD not in "\n".join(lines)


# ---- podman, buildah, skopeo -------------------------------------------------------------------------


def test_podman_pulls_by_name_and_pushes_to_the_proxy(cli, tools, named_registry, demo, proxy, soft_certs):
    require("podman")
    _dropin(cli, tools, named_registry.name, proxy)
    ref = f"{named_registry.name}/demo:1"
    tools.podman("pull", "--signature-policy", str(tools.policy), ref)
    assert podman_digest(tools, ref) == demo
    # registries.conf redirects pulls only: a push names the proxy's address
    tools.podman("push", "--signature-policy", str(tools.policy), ref, f"{proxy.address}/from-podman:1")
    assert skopeo_raw(f"{named_registry.address}/from-podman:1", soft_certs)[1] == demo


def test_podman_push_by_name_is_never_downgraded_to_plain_http(cli, tools, named_registry, demo, proxy):
    """The drop-in sets `insecure` on the proxy's loopback address only, never on the registry's name."""
    require("podman")
    _dropin(cli, tools, named_registry.name, proxy)
    ref = f"{named_registry.name}/demo:1"
    tools.podman("pull", "--signature-policy", str(tools.policy), ref)
    before = len(proxy.lines())
    pushed = tools.podman("push", "--signature-policy", str(tools.policy), ref, check=False)
    assert pushed.returncode != 0
    # straight to the registry's name, https only: the name resolves nowhere, no http:// attempt
    assert f"https://{named_registry.name}/v2/" in pushed.stderr and "http://" not in pushed.stderr, pushed.stderr
    assert len(proxy.lines()) == before


def test_buildah_builds_and_pushes_through_the_proxy(cli, tools, named_registry, proxy, soft_certs, tmp_path):
    require("buildah")
    _dropin(cli, tools, named_registry.name, proxy)
    policy = ["--signature-policy", str(tools.policy)]
    container = tools.buildah("from", *policy, "scratch").stdout.strip()
    (tmp_path / "hello.txt").write_text("built by buildah\n")
    tools.buildah("copy", container, str(tmp_path / "hello.txt"), "/hello.txt")
    tools.buildah("commit", *policy, container, "built:1")
    tools.buildah("rm", container)
    digest_file = tmp_path / "digest"
    tools.buildah("push", *policy, "--digestfile", str(digest_file), "built:1", f"docker://{proxy.address}/built:1")
    pushed = digest_file.read_text().strip()
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", pushed)
    assert skopeo_raw(f"{named_registry.address}/built:1", soft_certs)[1] == pushed


def test_skopeo_reads_the_drop_in_too(cli, tools, named_registry, demo, proxy):
    _dropin(cli, tools, named_registry.name, proxy)
    import hashlib

    raw = tools.skopeo("inspect", "--raw", f"docker://{named_registry.name}/demo:1").stdout
    assert "sha256:" + hashlib.sha256(raw.encode()).hexdigest() == demo


# ---- a key the registry refuses -------------------------------------------------------------------


def _one_refusal_line(proxy) -> str:
    lines = [line for line in proxy.lines() if REFUSED in line]
    assert lines, proxy.lines()[-5:]
    assert all(" 502 " in line and line.count("\n") == 0 for line in lines)
    return lines[-1]


def test_refused_key_ctr_shows_the_proxys_reason(cli, containerd, named_registry, demo, foreign_proxy, tmp_path):
    hosts = _containerd_hosts(cli, named_registry.name, foreign_proxy, tmp_path / "certs.d")
    pulled = containerd.ctr("image", "pull", "--hosts-dir", str(hosts), f"{named_registry.name}/demo:1", check=False)
    assert pulled.returncode != 0
    assert REFUSED in pulled.stderr, pulled.stderr  # the reason phrase of the proxy's 502
    print(pulled.stderr.strip().splitlines()[-1], _one_refusal_line(foreign_proxy), sep="\n")


def test_refused_key_cri_pull_shows_the_proxys_reason(cli, containerd, named_registry, demo, foreign_proxy):
    _containerd_hosts(cli, named_registry.name, foreign_proxy, containerd.hosts_dir)
    with pytest.raises(CriError) as refused:
        cri_pull(str(containerd.socket), f"{named_registry.name}/demo:1")
    assert REFUSED in str(refused.value)  # what kubelet would put in the pod's ErrImagePull event
    print(refused.value, _one_refusal_line(foreign_proxy), sep="\n")


@pytest.mark.parametrize("tool", ["podman", "buildah", "skopeo"])
def test_refused_key_containers_tools_fail_and_the_proxy_logs_why(cli, tool, tools, named_registry, demo, foreign_proxy):
    """containers/image 5.23 prints only the status of its /v2/ ping ("502 (Bad Gateway)"): the reason is
    in the proxy's log line (and in the response's reason phrase and error body, which newer versions show)."""
    require(tool)
    _dropin(cli, tools, named_registry.name, foreign_proxy)
    policy = ["--signature-policy", str(tools.policy)]
    if tool == "podman":
        failed = tools.podman("pull", *policy, f"{named_registry.name}/demo:1", check=False)
    elif tool == "buildah":
        container = tools.buildah("from", *policy, "scratch").stdout.strip()
        tools.buildah("commit", *policy, container, "empty:1")
        failed = tools.buildah("push", *policy, "empty:1", f"docker://{foreign_proxy.address}/empty:1", check=False)
    else:
        failed = tools.skopeo("inspect", f"docker://{named_registry.name}/demo:1", check=False)
    assert failed.returncode != 0
    assert f"{foreign_proxy.address}" in failed.stderr and "502" in failed.stderr, failed.stderr
    print(failed.stderr.strip().splitlines()[-1], _one_refusal_line(foreign_proxy), sep="\n")
