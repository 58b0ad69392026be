"""`tpmtls csr`: requests signed in the TPM that OpenSSL verifies."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from support.commands import openssl, require


@pytest.mark.parametrize("alg", ["ecc-p256", "ecc-p384", "rsa2048", "rsa3072"])
def test_csr_verifies_with_openssl(alg, cli, tmp_path: Path):
    require("openssl")
    cli("key", "create", "--alg", alg, "--out", "client.key")
    out = cli("csr", "--key", "client.key", "--subject", "CN=client,O=tpmtls",
              "--san", "DNS:client.example", "--san", "IP:127.0.0.1", "--out", "client.csr")
    assert "client.csr" in out.stdout
    checked = openssl("req", "-verify", "-noout", "-in", str(tmp_path / "client.csr"))
    assert b"verify OK" in checked.stdout + checked.stderr

    csr = x509.load_pem_x509_csr((tmp_path / "client.csr").read_bytes())
    assert csr.is_signature_valid
    assert csr.subject.rfc4514_string() == "CN=client,O=tpmtls"
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["client.example"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    pub = cli("key", "show", "client.key", "--pubout").stdout.encode()
    assert csr.public_key() == load_pem_public_key(pub)


def test_csr_openssl_subject_spelling(cli, tmp_path: Path):
    cli("key", "create", "--out", "k.key")
    cli("csr", "--key", "k.key", "--subject", "/O=Acme/CN=node-1", "--out", "k.csr")
    csr = x509.load_pem_x509_csr((tmp_path / "k.csr").read_bytes())
    assert csr.subject.rfc4514_string() == "CN=node-1,O=Acme"


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--subject", "junk"], "not a distinguished name"),
        (["--subject", "CN=x", "--san", "FTP:x"], "unknown type FTP"),
        (["--subject", "CN=x", "--san", "IP:not-an-ip"], "not an IP address"),
    ],
)
def test_csr_bad_arguments(args, expected, cli, tmp_path: Path):
    cli("key", "create", "--out", "k.key")
    line = cli.fails("csr", "--key", "k.key", *args, "--out", "bad.csr")
    assert expected in line
    assert not (tmp_path / "bad.csr").exists()
