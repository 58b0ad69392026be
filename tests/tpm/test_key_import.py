"""Importing software keys: same public key, never written in clear, bound to one TPM."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from tpm2_pytss.constants import TPMA_OBJECT

import tpmtls
from support.commands import require
from tpmtls.testing import SwTpm


def software_key(kind: str):
    if kind == "rsa2048":
        return rsa.generate_private_key(65537, 2048)
    return ec.generate_private_key(ec.SECP256R1() if kind == "ecc-p256" else ec.SECP384R1())


def pem(key, password: bytes | None = None) -> bytes:
    enc = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def secret_bytes(key) -> bytes:
    """Bytes of the private key that must never appear in a file we write."""
    if isinstance(key, rsa.RSAPrivateKey):
        p = key.private_numbers().p
        return p.to_bytes((p.bit_length() + 7) // 8, "big")
    d = key.private_numbers().private_value
    return d.to_bytes((d.bit_length() + 7) // 8, "big")


@pytest.mark.parametrize("kind", ["rsa2048", "ecc-p256", "ecc-p384"])
def test_import_keeps_public_key_and_signs(kind, tpm, tmp_path: Path):
    soft = software_key(kind)
    out = tmp_path / "imported.key"
    key = tpm.import_key(pem(soft), out)
    assert key.public_key() == soft.public_key()
    data = out.read_bytes()
    assert data.startswith(b"-----BEGIN TSS2 PRIVATE KEY-----")
    assert secret_bytes(soft) not in data  # wrapped by the TPM, not stored in clear
    assert not key.attributes & TPMA_OBJECT.FIXEDTPM  # TPM2_Import refuses fixedTPM objects

    reloaded = tpm.load_key(out)
    if isinstance(soft, rsa.RSAPrivateKey):
        sig = reloaded.sign(b"m", padding.PKCS1v15(), hashes.SHA256())
        soft.public_key().verify(sig, b"m", padding.PKCS1v15(), hashes.SHA256())
    else:
        sig = reloaded.sign(b"m", ec.ECDSA(hashes.SHA256()))
        soft.public_key().verify(sig, b"m", ec.ECDSA(hashes.SHA256()))


def test_cli_import_encrypted_pem(cli, tmp_path: Path):
    soft = software_key("ecc-p256")
    (tmp_path / "soft.pem").write_bytes(pem(soft, b"pem-secret"))
    (tmp_path / "pempw").write_text("pem-secret\n")
    out = cli("key", "import", "soft.pem", "--out", "tpm.key", "--pem-password-file", "pempw")
    assert "imported ecc-p256 key" in out.stdout
    pub = cli("key", "show", "tpm.key", "--pubout").stdout.encode()
    assert serialization.load_pem_public_key(pub) == soft.public_key()
    line = cli.fails("key", "import", "soft.pem", "--out", "again.key")
    assert "soft.pem" in line and "password" in line
    assert not (tmp_path / "again.key").exists()


def test_imported_key_refuses_other_tpm(tpm, tmp_path: Path):
    """The wrapped file is useless on another TPM: a clear error naming the parent."""
    require("swtpm")
    out = tmp_path / "imported.key"
    tpm.import_key(pem(software_key("rsa2048")), out)
    with SwTpm(tmp_path / "other") as other:
        pool = tpmtls.Pool(other.tcti)
        try:
            with pytest.raises(tpmtls.KeyFileError) as err:
                tpmtls.connect(pool=pool).load_key(out)
        finally:
            pool.close()
    msg = str(err.value)
    assert str(out) in msg and "0x40000001" in msg and "different TPM" in msg


def test_cli_imported_key_on_other_tpm_is_one_line(cli, tpm, tmp_path: Path):
    require("swtpm")
    tpm.import_key(pem(software_key("ecc-p256")), tmp_path / "imported.key")
    with SwTpm(tmp_path / "other") as other:
        line = cli.fails("--tcti", other.tcti, "csr", "--key", "imported.key", "--subject", "CN=x", "--out", "x.csr")
    assert "imported.key" in line and "parent 0x40000001" in line
    assert not (tmp_path / "x.csr").exists()
