"""`tpmtls certs install` validates and writes tpmtls's certs.d, never
Docker's; tpmtls-push/pull read tpmtls's root first, then Docker's; stock docker keeps working."""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from support.commands import require
from support.registry import env_for, run_cli, software_cert_dir
from tpmtls.lab.process import child_env


@pytest.fixture
def tpm_pair(cli, tpm, pki, tmp_path):
    cli("key", "create", "--out", "client.key")
    public = tpm.load_key(tmp_path / "client.key").public_key()
    cert = pki.issue(public, "node-1", f"node-1-{tmp_path.name}.crt")
    return cert, tmp_path / "client.key", public


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("host", ["../escaped", "/abs/path", "a/b", "..", "host:99999", "", "-bad.host", "h:1/x"])
def test_host_must_be_host_and_port(host, cli, tpm_pair, pki, tmp_path):
    cert, key, _ = tpm_pair
    (tmp_path / "root").mkdir()
    before = _tree(tmp_path)
    line = cli.fails("certs", "install", host, "--cert", str(cert), "--key", str(key), "--ca", str(pki.ca_file),
                     "--root", "root")
    assert "HOST[:PORT]" in line
    assert _tree(tmp_path) == before


def _cert(pki, public, *, days_ago: int = 0, days: int = 2, server: bool = False) -> bytes:
    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=days_ago)
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import ExtendedKeyUsageOID

    eku = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "n")]))
            .issuer_name(pki.cert.subject).public_key(public).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.ExtendedKeyUsage([eku]), critical=False).sign(pki.key, hashes.SHA256()))
    return cert.public_bytes(Encoding.PEM)


def test_bad_certificates_are_refused_and_nothing_written(cli, tpm_pair, pki, tmp_path):
    cert, key, public = tpm_pair
    other_cert, _ = pki.software_client("someone-else")
    cases = {
        "garbage.crt": (b"not a certificate\n", "not a PEM certificate"),
        "other.crt": (other_cert.read_bytes(), "another key"),
        "expired.crt": (_cert(pki, public, days_ago=10, days=2), "expired"),
        "server.crt": (_cert(pki, public, server=True), "clientAuth"),
    }
    for name, (data, words) in cases.items():
        (tmp_path / name).write_bytes(data)
        line = cli.fails("certs", "install", "reg.example:5000", "--cert", name, "--key", str(key),
                         "--ca", str(pki.ca_file), "--root", "root")
        assert name in line and words in line, line
    (tmp_path / "bad-ca.crt").write_text("garbage\n")
    line = cli.fails("certs", "install", "reg.example:5000", "--cert", str(cert), "--key", str(key),
                     "--ca", "bad-ca.crt", "--root", "root")
    assert "bad-ca.crt" in line and "CA" in line
    assert not (tmp_path / "root" / "reg.example:5000").exists()


def test_install_writes_tpmtls_root_by_default_env(cli, tpm_pair, pki, tmp_path):
    cert, key, _ = tpm_pair
    env = {"TPMTLS_CERTS_D": str(tmp_path / "tpmtls-certs.d")}
    out = cli("certs", "install", "reg.example:5000", "--cert", str(cert), "--key", str(key), "--ca",
              str(pki.ca_file), env=env).stdout
    target = tmp_path / "tpmtls-certs.d" / "reg.example:5000"
    # Docker's three names, and the pointer to the certificate's renewal record (Docker ignores it)
    assert "installed" in out and sorted(os.listdir(target)) == [".tpmtls-renewal", "ca.crt", "client.cert", "client.key"]
    assert (target / "client.key").stat().st_mode & 0o777 == 0o600
    # again: an installed key is not replaced silently; with --force it is, and kept as client.key.bak
    line = cli.fails("certs", "install", "reg.example:5000", "--cert", str(cert), "--key", str(key), "--ca",
                     str(pki.ca_file), env=env)
    assert "already holds a client key" in line and "--force" in line
    before = (target / "client.key").read_bytes()
    cli("certs", "install", "reg.example:5000", "--cert", str(cert), "--key", str(key), "--ca", str(pki.ca_file),
        "--force", env=env)
    assert sorted(os.listdir(tmp_path / "tpmtls-certs.d")) == ["reg.example:5000"]
    assert sorted(os.listdir(target)) == [".tpmtls-renewal", "ca.crt", "client.cert", "client.key", "client.key.bak"]
    assert (target / "client.key.bak").read_bytes() == before
    assert (target / "client.key.bak").stat().st_mode & 0o777 == 0o600


def test_unwritable_root_is_one_line(cli, tpm_pair, pki, tmp_path):
    cert, key, _ = tpm_pair
    (tmp_path / "a-file").write_text("not a directory\n")
    line = cli.fails("certs", "install", "reg.example:5000", "--cert", str(cert), "--key", str(key), "--ca",
                     str(pki.ca_file), "--root", "a-file")
    assert "not a directory" in line and "a-file" in line


def test_push_reads_tpmtls_root_then_dockers(registry, pki, tpm, small_image, test_tpm, tmp_path):
    """Client pair in tpmtls's root, the CA only in Docker's: both are used."""
    host = f"localhost:{registry.port}"
    ours, docker = tmp_path / "tpmtls", tmp_path / "docker-certs"
    key = tpm.create_key("ecc-p256", tmp_path / "k.key")
    cert = pki.issue(key.public_key(), "two-roots", "two-roots.crt")
    (ours / host).mkdir(parents=True)
    shutil.copy(cert, ours / host / "client.cert")
    shutil.copy(tmp_path / "k.key", ours / host / "client.key")
    (docker / host).mkdir(parents=True)
    shutil.copy(pki.ca_file, docker / host / "ca.crt")
    env = env_for(test_tpm, tmp_path, TPMTLS_CERTS_D=str(ours), DOCKER_CERTS_D=str(docker))
    proc = run_cli("push", f"docker-archive:{small_image}", f"{host}/two-roots:1", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr


def test_tpm_key_in_dockers_certs_d_still_works_with_a_warning(registry, pki, tpm, small_image, test_tpm, tmp_path):
    host = f"localhost:{registry.port}"
    docker = tmp_path / "docker-certs"
    from support.registry import tpm_cert_dir

    tpm_cert_dir(docker / host, pki, tpm)
    env = env_for(test_tpm, tmp_path, TPMTLS_CERTS_D=str(tmp_path / "empty"), DOCKER_CERTS_D=str(docker))
    proc = run_cli("push", f"docker-archive:{small_image}", f"{host}/migrate:1", env=env)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "mv " in warnings[0] and str(tmp_path / "empty" / host) in warnings[0]


@pytest.mark.machine  # writes /etc/docker/certs.d; starts dockerd
def test_stock_docker_pull_still_works_after_certs_install(registry, pki, tpm, small_image, test_tpm, tmp_path,
                                                           monkeypatch, cli):
    """Stock dockerd with Docker's certs.d (software pair) for the registry; `tpmtls certs install`
    with the TPM key for the same registry; then both `docker pull` and tpmtls-pull work."""
    require("dockerd", "docker")
    from support.peers import ConnectProxy
    from tpmtls.lab import Dockerd

    name = f"server.domain.com:{registry.port}"  # not resolving into 127/8: dockerd reads certs.d for it
    docker_dir = Path("/etc/docker/certs.d") / name
    if docker_dir.exists():
        pytest.fail(f"{docker_dir} already exists; refusing to touch it")
    proxy = ConnectProxy()
    try:
        software_cert_dir(docker_dir, pki, "stock-docker")
        # the TPM credentials, installed where tpmtls keeps them
        key = tpm.create_key("ecc-p256", tmp_path / "client.key")
        cert = pki.issue(key.public_key(), "tpm-node", "tpm-node.crt")
        ours = tmp_path / "tpmtls-certs.d"
        cli("certs", "install", name, "--cert", str(cert), "--key", str(tmp_path / "client.key"), "--ca",
            str(pki.ca_file), env={"TPMTLS_CERTS_D": str(ours)})
        assert sorted(os.listdir(docker_dir)) == ["ca.crt", "client.cert", "client.key"]
        assert b"TSS2" not in (docker_dir / "client.key").read_bytes()
        env = env_for(test_tpm, tmp_path, TPMTLS_CERTS_D=str(ours))
        resolve = f"{name}:127.0.0.1"
        push = run_cli("push", f"docker-archive:{small_image}", f"{name}/stock:1", "--resolve", resolve, env=env)
        assert push.returncode == 0, push.stderr
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        with Dockerd(tmp_path / "dockerd") as daemon:
            pulled = subprocess.run(["docker", "pull", f"{name}/stock:1"], capture_output=True, text=True,
                                    env=child_env(daemon.env), timeout=300)
        assert pulled.returncode == 0, pulled.stderr
        assert any(t.endswith(f":{registry.port}") for t in proxy.tunnels)
        again = run_cli("pull", f"{name}/stock:1", f"oci:{tmp_path / 'pulled'}", "--resolve", resolve, env=env)
        assert again.returncode == 0, again.stderr
        assert "warning" not in again.stderr
    finally:
        proxy.close()
        shutil.rmtree(docker_dir, ignore_errors=True)


def test_install_a_persistent_key_by_its_handle_file(cli, tpm_pair, pki, tmp_path):
    cert, key, _ = tpm_pair
    cli("key", "persist", str(key), "0x81000a19", "--out", "handle.pem")
    cli("certs", "install", "reg.example:5001", "--cert", str(cert), "--key", "handle.pem", "--ca", str(pki.ca_file),
        "--root", "root")
    installed = (tmp_path / "root" / "reg.example:5001" / "client.key").read_bytes()
    assert installed == (tmp_path / "handle.pem").read_bytes()
    other, _ = pki.software_client("not-this-key")
    assert "another key" in cli.fails("certs", "install", "reg.example:5001", "--cert", str(other), "--key",
                                      "handle.pem", "--ca", str(pki.ca_file), "--root", "root", "--force")
    assert (tmp_path / "root" / "reg.example:5001" / "client.key").read_bytes() == installed


def test_install_for_the_services_group(cli, tpm_pair, pki, tmp_path):
    """--group: the key readable by that group (the proxy services' tpmtls group), no one else's."""
    import grp

    cert, key, _ = tpm_pair
    tss = grp.getgrnam("tss")  # a group every machine with tpm-udev has
    env = {"TPMTLS_CERTS_D": str(tmp_path / "tpmtls-certs.d")}
    cli("certs", "install", "reg.example:5000", "--cert", str(cert), "--key", str(key), "--ca", str(pki.ca_file),
        "--group", "tss", env=env)
    target = tmp_path / "tpmtls-certs.d" / "reg.example:5000"
    for name, mode in (("client.key", 0o640), ("client.cert", 0o644), ("ca.crt", 0o644)):
        st = (target / name).stat()
        assert (st.st_mode & 0o777, st.st_gid) == (mode, tss.gr_gid), name
    cli("certs", "env", "d1.example:2376", "--cert-path", str(tmp_path / "d1"), "--cert", str(cert), "--key", str(key),
        "--ca", str(pki.ca_file), "--group", "tss")
    st = (tmp_path / "d1" / "key.pem").stat()
    assert (st.st_mode & 0o777, st.st_gid) == (0o640, tss.gr_gid)
    line = cli.fails("certs", "install", "reg.example:5000", "--cert", str(cert), "--key", str(key), "--ca",
                     str(pki.ca_file), "--group", "no-such-group-here", env=env)
    assert line == ("tpmtls: --group no-such-group-here: no such group (make install creates tpmtls; "
                    "or groupadd no-such-group-here)")
