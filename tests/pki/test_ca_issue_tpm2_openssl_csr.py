"""`tpmtls ca issue` signs the EC CSRs tpm2-openssl writes (ecdsa-with-SHA256 with NULL parameters)."""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from support.commands import openssl, require


def test_ca_issue_accepts_tpm2_openssl_ec_csr(cli, test_tpm, tmp_path):
    require("openssl")
    env = {**test_tpm.env, "TPM2OPENSSL_TCTI": test_tpm.tcti}
    key, req = tmp_path / "k.pem", tmp_path / "req.pem"
    openssl("genpkey", "-provider", "tpm2", "-provider", "default", "-algorithm", "EC", "-pkeyopt", "group:P-256",
            "-out", str(key), env=env)
    openssl("req", "-new", "-provider", "tpm2", "-provider", "default", "-key", str(key), "-subj", "/CN=tpm2-openssl",
            "-out", str(req), env=env)
    der = openssl("req", "-in", str(req), "-outform", "DER", env=env).stdout
    assert bytes.fromhex("300c06082a8648ce3d0403020500") in der  # the NULL parameters this test is about
    openssl("req", "-in", str(req), "-verify", "-noout", env=env)  # OpenSSL accepts it as it is
    cli("ca", "init", str(tmp_path / "ca"), "--name", "test CA")
    proc = cli("ca", "issue", str(tmp_path / "ca"), "--csr", str(req), "--client", "--out", str(tmp_path / "c.pem"))
    assert proc.stdout.startswith("issued client certificate for CN=tpm2-openssl")
    cert = x509.load_pem_x509_certificate((tmp_path / "c.pem").read_bytes())
    pub = openssl("pkey", "-provider", "tpm2", "-provider", "default", "-in", str(key), "-pubout", env=env).stdout
    from cryptography.hazmat.primitives import serialization

    assert cert.public_key() == serialization.load_pem_public_key(pub)
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    lines = req.read_bytes().splitlines()
    lines[1] = b"MAAA" + lines[1][4:]  # a broken outer DER header: still refused, in one line
    (tmp_path / "bad.pem").write_bytes(b"\n".join(lines) + b"\n")
    line = cli.fails("ca", "issue", str(tmp_path / "ca"), "--csr", str(tmp_path / "bad.pem"), "--client",
                     "--out", str(tmp_path / "c2.pem"))
    assert "bad.pem: not a PEM CSR" in line
