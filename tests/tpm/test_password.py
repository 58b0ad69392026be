"""Keys with a password: sign with the right one, a clear error otherwise; DA-protected."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from tpm2_pytss.constants import TPMA_OBJECT

import tpmtls


def test_password_key_signs_only_with_its_password(tpm, tmp_path: Path):
    path = tmp_path / "pw.key"
    created = tpm.create_key("ecc-p256", path, password="correct horse")
    assert not created.attributes & TPMA_OBJECT.NODA  # a password is worth protecting from guessing

    key = tpm.load_key(path, password="correct horse")
    sig = key.sign(b"m", ec.ECDSA(hashes.SHA256()))
    key.public_key().verify(sig, b"m", ec.ECDSA(hashes.SHA256()))

    with pytest.raises(tpmtls.KeyAuthError, match="needs|has a password"):
        tpm.load_key(path)
    with pytest.raises(tpmtls.KeyAuthError, match=r"pw\.key: wrong password"):
        tpm.load_key(path, password="wrong")
    # the right password still works after a wrong one (same key, other object)
    tpm.load_key(path, password="correct horse").sign(b"m", ec.ECDSA(hashes.SHA256()))


def test_passwordless_keys_are_noda(tpm):
    assert tpm.create_key("rsa2048").attributes & TPMA_OBJECT.NODA


def test_cli_password_file(cli, tmp_path: Path):
    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "bad").write_text("nope\n")
    cli("key", "create", "--alg", "rsa2048", "--out", "pw.key", "--password-file", "pw")
    assert "password: yes" in cli("key", "show", "pw.key").stdout
    cli("csr", "--key", "pw.key", "--subject", "CN=pw", "--out", "ok.csr", "--password-file", "pw")

    line = cli.fails("csr", "--key", "pw.key", "--subject", "CN=pw", "--out", "no.csr")
    assert "pw.key" in line and "password" in line
    line = cli.fails("csr", "--key", "pw.key", "--subject", "CN=pw", "--out", "bad.csr", "--password-file", "bad")
    assert "pw.key: wrong password" in line and "rc 0x" in line
    line = cli.fails("csr", "--key", "pw.key", "--subject", "CN=pw", "--out", "bad.csr", "--password-file", "missing")
    assert "missing" in line
    assert not (tmp_path / "no.csr").exists() and not (tmp_path / "bad.csr").exists()
