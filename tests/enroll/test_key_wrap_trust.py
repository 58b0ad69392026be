"""`tpmtls key wrap` wraps only to an EK a TPM maker the owner trusts vouches for: its certificate chains to
--ek-roots, any public key beside it is the certificate's, and its key is not ROCA-weak. Before, any public
key passed as "the EK", and whoever made that file could unwrap the owner's key in software."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import tpmtls
from support.attest import EkCa, ek_cert_for, ek_machine
from support.commands import require
from support.roca import roca_rsa_key

PEM = serialization.Encoding.PEM
SPKI = serialization.PublicFormat.SubjectPublicKeyInfo


@pytest.fixture(scope="module")
def maker(tmp_path_factory):
    """A machine whose TPM has EK certificates from a private maker CA, that maker's roots, and another maker's."""
    require("swtpm", "swtpm_setup", "swtpm_localca", "tpm2-abrmd")
    tmp = tmp_path_factory.mktemp("wrap")
    ek_ca = EkCa(tmp / "ekca")
    machine = ek_machine(tmp / "machine", ek_ca)
    other = EkCa(tmp / "other-maker", manufacturer="someone-else")
    other.manufacture(tmp / "other-state")  # makes that maker's CA files
    try:
        yield machine, ek_ca, ek_ca.bundle(tmp / "roots.pem"), other.bundle(tmp / "other-roots.pem")
    finally:
        machine.stop()


@pytest.fixture
def owner(tmp_path):
    """The owner's software key, and the machine's `key ek` output beside it."""
    soft = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "k.pem").write_bytes(soft.private_bytes(PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
    return soft


def _ek_file(cli, maker, tmp_path):
    machine = maker[0]
    out = cli("key", "ek", "--out", "EK.pem", env=machine.env).stdout
    assert "(with its certificate)" in out
    text = (tmp_path / "EK.pem").read_bytes()
    return text, x509.load_pem_x509_certificate(text[text.index(b"-----BEGIN CERTIFICATE-----"):])


def test_wrap_to_a_certified_ek_and_import_there(cli, maker, owner, tmp_path):
    machine, _, roots, _ = maker
    _, ek_cert = _ek_file(cli, maker, tmp_path)
    out = cli("key", "wrap", "k.pem", "--ek", "EK.pem", "--ek-roots", str(roots), "--out", "k.blob").stdout
    assert f"for the EK certified by {ek_cert.issuer.rfc4514_string()}" in out and "which chains to" in out
    assert "only the TPM holding that EK can import it" in out
    cli("key", "import-wrapped", "k.blob", "--out", "k.key", env=machine.env)
    assert tpmtls.connect(machine.tcti).load_key(tmp_path / "k.key").public_key() == owner.public_key()


def test_a_software_key_is_not_an_ek(cli, maker, owner, tmp_path):
    """Before: `--ek` took any RSA-2048 public key and printed "only that TPM can import it"."""
    _, _, roots, _ = maker
    fake = rsa.generate_private_key(65537, 2048)
    (tmp_path / "fake.pem").write_bytes(fake.public_key().public_bytes(PEM, SPKI))
    line = cli.fails("key", "wrap", "k.pem", "--ek", "fake.pem", "--ek-roots", str(roots), "--out", "k.blob")
    assert line.startswith("tpmtls: fake.pem: holds no EK certificate, only a public key"), line
    assert "--ek-unverified" in line
    assert not (tmp_path / "k.blob").exists()
    # said explicitly, and what it gives up said back
    out = cli("key", "wrap", "k.pem", "--ek", "fake.pem", "--ek-unverified", "--out", "k.blob").stdout
    assert "unverified: nothing shows that this key belongs to a TPM" in out and "unwrap the key in software" in out


def test_an_ek_pem_whose_key_is_not_its_certificates(cli, maker, owner, tmp_path):
    """Before: an EK.pem with a software key beside a genuine EK certificate was wrapped to the software key."""
    _, _, roots, _ = maker
    text, ek_cert = _ek_file(cli, maker, tmp_path)
    fake = rsa.generate_private_key(65537, 2048)
    (tmp_path / "EK.pem").write_bytes(fake.public_key().public_bytes(PEM, SPKI) + ek_cert.public_bytes(PEM))
    line = cli.fails("key", "wrap", "k.pem", "--ek", "EK.pem", "--ek-roots", str(roots), "--out", "k.blob")
    assert line == "tpmtls: EK.pem: the EK public key given is not the key of the EK certificate", line
    line = cli.fails("key", "wrap", "k.pem", "--ek", "EK.pem", "--ek-unverified", "--out", "k.blob")
    assert "its public key is not the key of the EK certificate beside it" in line
    assert not (tmp_path / "k.blob").exists()


def test_an_ek_certificate_from_a_maker_outside_the_roots(cli, maker, owner, tmp_path):
    _, _, _, other_roots = maker
    _ek_file(cli, maker, tmp_path)
    line = cli.fails("key", "wrap", "k.pem", "--ek", "EK.pem", "--ek-roots", str(other_roots), "--out", "k.blob")
    assert line.startswith("tpmtls: EK.pem: the EK certificate does not chain to a trusted CA"), line
    assert not (tmp_path / "k.blob").exists()


def test_a_roca_weak_ek_is_refused(cli, maker, owner, tmp_path):
    """A maker-certified EK whose RSA key carries the ROCA fingerprint: its private key can be computed."""
    _, ek_ca, roots, _ = maker
    weak = roca_rsa_key()
    der = ek_cert_for(ek_ca, weak.public_key())
    (tmp_path / "weak.der").write_bytes(der)  # DER, as read from the TPM's NV, is taken too
    line = cli.fails("key", "wrap", "k.pem", "--ek", "weak.der", "--ek-roots", str(roots), "--out", "k.blob")
    assert line.startswith("tpmtls: weak.der: the EK is an RSA key with the ROCA fingerprint (CVE-2017-15361)"), line
    line = cli.fails("key", "wrap", "k.pem", "--ek", "weak.der", "--ek-unverified", "--out", "k.blob")
    assert "ROCA" in line
    assert not (tmp_path / "k.blob").exists()


def test_usage(cli, maker, owner, tmp_path):
    _, _, roots, _ = maker
    _ek_file(cli, maker, tmp_path)
    line = cli.fails("key", "wrap", "k.pem", "--ek", "EK.pem", "--out", "k.blob")
    assert line.startswith("tpmtls: --ek-roots BUNDLE: the TPM makers' CA certificates"), line
    line = cli.fails("key", "wrap", "k.pem", "--ek", "EK.pem", "--ek-roots", str(roots), "--ek-unverified",
                     "--out", "k.blob")
    assert "give one" in line
    (tmp_path / "empty.pem").write_text("")
    line = cli.fails("key", "wrap", "k.pem", "--ek", "EK.pem", "--ek-roots", "empty.pem", "--out", "k.blob")
    assert line == "tpmtls: empty.pem: holds no PEM certificate", line
    assert not (tmp_path / "k.blob").exists()
