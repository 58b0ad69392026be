"""Docker's files on disk with a TPM key in DER (which the key parser reads): every check that
asks "is this a TPM key?" answers the same, and one rule for what a certificate is for."""

from __future__ import annotations

import base64
import datetime
import re
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tpmtls.docker.certcheck import allows
from tpmtls.docker.files import CLIENT_CERT, CLIENT_KEY, lookup


def to_der(pem_path: Path, der_path: Path) -> Path:
    body = re.search(rb"-----BEGIN [A-Z0-9 ]+-----\n(.*?)-----END", pem_path.read_bytes(), re.S)
    assert body is not None
    der_path.write_bytes(base64.b64decode(b"".join(body.group(1).split())))
    return der_path


@pytest.fixture(scope="module")
def der_key(tpm, tmp_path_factory) -> tuple[Path, object]:
    """A TPM key file in DER, and its key object."""
    d = tmp_path_factory.mktemp("der")
    key = tpm.create_key("ecc-p256", d / "client.pem")
    return to_der(d / "client.pem", d / "client.der"), key


def test_certs_env_lays_out_a_der_tpm_key(cli, pki, der_key, tmp_path: Path):
    der, key = der_key
    cert = pki.issue(key.public_key(), "der-client", "der-client.crt")
    out = cli("certs", "env", "127.0.0.1:2376", "--cert-path", str(tmp_path / "docker"), "--cert", str(cert),
              "--key", str(der), "--ca", str(pki.ca_file)).stdout
    assert "export DOCKER_TLS_VERIFY=1" in out
    assert (tmp_path / "docker" / "key.pem").read_bytes() == der.read_bytes()


def test_daemon_config_knows_a_der_tpm_key_is_not_for_dockerd(cli, pki, der_key):
    der, key = der_key
    cert = pki.issue(key.public_key(), "localhost", "der-server.crt", server=True)
    line = cli.fails("certs", "daemon-config", "--cert", str(cert), "--key", str(der), "--ca", str(pki.ca_file))
    assert f"{der}: a TPM key file; dockerd cannot use a TPM" in line


def test_der_tpm_key_in_dockers_certs_d_warns(der_key, tmp_path: Path, caplog):
    der, _ = der_key
    theirs = tmp_path / "docker" / "registry.example:5000"
    theirs.mkdir(parents=True)
    (theirs / CLIENT_CERT).write_bytes(b"")
    (theirs / CLIENT_KEY).write_bytes(der.read_bytes())
    found = lookup("registry.example:5000", ours=tmp_path / "ours", docker=tmp_path / "docker")
    assert found.client == (theirs / CLIENT_CERT, theirs / CLIENT_KEY)
    # a warning of the tpmtls.docker logger (the commands show it on stderr as "tpmtls …: warning: …")
    assert f"{theirs / CLIENT_KEY} is a TPM key in Docker's certs.d" in caplog.text


def test_connect_with_a_der_tpm_key(cli, pki, der_key, s_server):
    der, key = der_key
    cert = pki.issue(key.public_key(), "der-connect", "der-connect.crt")
    out = cli("connect", f"127.0.0.1:{s_server.port}", "--cert", str(cert), "--key", str(der),
              "--cafile", str(pki.ca_file)).stdout
    assert "(in the TPM)" in out


def test_both_tls_factories_load_a_der_tpm_key_whatever_its_name(pki, der_key, tpm, tmp_path: Path):
    """DOCKER_CERT_PATH calls it key.pem even in DER: the stdlib gets PEM, pyOpenSSL DER."""
    import tpmtls

    der, key = der_key
    named_pem = tmp_path / "key.pem"
    named_pem.write_bytes(der.read_bytes())
    cert = pki.issue(key.public_key(), "der-factories", "der-factories.crt")
    tpmtls.ssl_context(cert, named_pem, pki.ca_file, pool=tpm.pool)
    tpmtls.pyopenssl_context(cert, named_pem, pki.ca_file, hostname="localhost", pool=tpm.pool)


def test_a_ca_whose_tpm_key_file_is_der_still_issues(cli, tmp_path: Path):
    cli("ca", "init", "ca", "--name", "DER CA", "--tpm")
    to_der(tmp_path / "ca" / "ca.key", tmp_path / "ca.der").replace(tmp_path / "ca" / "ca.key")
    cli("key", "create", "--out", "k.key")
    cli("csr", "--key", "k.key", "--subject", "CN=der", "--out", "k.csr")
    cli("ca", "issue", "ca", "--csr", "k.csr", "--client", "--out", "k.crt")
    issued = x509.load_pem_x509_certificate((tmp_path / "k.crt").read_bytes())
    ca = x509.load_pem_x509_certificate((tmp_path / "ca" / "ca.crt").read_bytes())
    issued.verify_directly_issued_by(ca)


def _cert(usages: list[x509.ObjectIdentifier] | None) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "usage")])
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
         .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1)))
    if usages is not None:
        b = b.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return b.sign(key, hashes.SHA256())


@pytest.mark.parametrize("usages, client, server", [
    (None, True, True),
    ([ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE], True, True),
    ([ExtendedKeyUsageOID.CLIENT_AUTH], True, False),
    ([ExtendedKeyUsageOID.SERVER_AUTH], False, True),
    ([ExtendedKeyUsageOID.CODE_SIGNING], False, False),
], ids=["no-eku", "any", "client", "server", "code-signing"])
def test_one_rule_for_what_a_certificate_is_for(usages, client, server):
    cert = _cert(usages)
    assert allows(cert, ExtendedKeyUsageOID.CLIENT_AUTH) is client
    assert allows(cert, ExtendedKeyUsageOID.SERVER_AUTH) is server
