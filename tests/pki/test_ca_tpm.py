"""`tpmtls ca init --tpm`: a CA whose key lives in the TPM issues certificates OpenSSL verifies."""

from __future__ import annotations

from support.commands import openssl


def test_ca_key_in_the_tpm_issues_verifiable_certificates(cli, tmp_path):
    out = cli("ca", "init", "ca", "--name", "TPM-held CA", "--tpm")
    assert "inside the TPM" in out.stdout and out.stderr == ""
    assert (tmp_path / "ca" / "ca.key").read_text().startswith("-----BEGIN TSS2 PRIVATE KEY-----")
    cli("key", "create", "--alg", "ecc-p256", "--out", "client.key")
    cli("csr", "--key", "client.key", "--subject", "CN=tpm-ca-client", "--out", "client.csr")
    cli("ca", "issue", "ca", "--csr", "client.csr", "--client", "--out", "client.crt")
    verify = openssl("verify", "-purpose", "sslclient", "-CAfile", str(tmp_path / "ca" / "ca.crt"),
                     str(tmp_path / "client.crt"))
    assert b"OK" in verify.stdout


def test_tpm_ca_on_another_tpm_is_one_line(cli, fresh_tpm, tmp_path):
    cli("ca", "init", "ca", "--name", "TPM-held CA", "--tpm")
    cli("key", "create", "--alg", "ecc-p256", "--out", "client.key")
    cli("csr", "--key", "client.key", "--subject", "CN=x", "--out", "client.csr")
    line = cli.fails("ca", "issue", "ca", "--csr", "client.csr", "--client", "--out", "x.crt",
                     env=fresh_tpm.env)
    assert "ca.key" in line and "different TPM" in line, line
