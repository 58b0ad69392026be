"""Key files interoperate with tpm2-openssl (Debian's tpm2 provider) in both directions."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from support.commands import openssl, require

ALGS = ["ecc-p256", "ecc-p384", "rsa2048", "rsa3072"]


def tpm2_env(test_tpm) -> dict[str, str]:
    return {**test_tpm.env, "TPM2OPENSSL_TCTI": test_tpm.tcti}


@pytest.mark.parametrize("alg", ALGS)
def test_tpmtls_key_reads_in_tpm2_openssl(alg, cli, test_tpm, tmp_path: Path):
    require("openssl")
    key = tmp_path / "client.key"
    cli("key", "create", "--alg", alg, "--out", str(key))
    assert key.read_text().startswith("-----BEGIN TSS2 PRIVATE KEY-----\n")
    ours = cli("key", "show", str(key), "--pubout").stdout.encode()
    theirs = openssl("pkey", "-provider", "tpm2", "-provider", "default", "-in", str(key), "-pubout",
                     env=tpm2_env(test_tpm)).stdout
    assert serialization.load_pem_public_key(theirs) == serialization.load_pem_public_key(ours)


@pytest.mark.parametrize(
    "genpkey",
    [
        ["-algorithm", "RSA", "-pkeyopt", "bits:2048"],
        ["-algorithm", "EC", "-pkeyopt", "group:P-256"],
    ],
    ids=["rsa2048", "ecc-p256"],
)
def test_tpm2_openssl_key_loads_and_signs(genpkey, test_tpm, tpm, tmp_path: Path):
    require("openssl")
    key_file = tmp_path / "theirs.key"
    openssl("genpkey", "-provider", "tpm2", "-provider", "default", *genpkey, "-out", str(key_file),
            env=tpm2_env(test_tpm))
    their_pub = openssl("pkey", "-provider", "tpm2", "-provider", "default", "-in", str(key_file), "-pubout",
                        env=tpm2_env(test_tpm)).stdout

    key = tpm.load_key(key_file)
    assert key.public_key() == serialization.load_pem_public_key(their_pub)
    data = b"signed by a key tpm2-openssl made"
    if isinstance(key, rsa.RSAPrivateKey):
        pkcs1 = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        key.public_key().verify(pkcs1, data, padding.PKCS1v15(), hashes.SHA256())
        pss = padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH)
        sig = key.sign(data, pss, hashes.SHA256())
        key.public_key().verify(sig, data, pss, hashes.SHA256())
    else:
        sig = key.sign(data, ec.ECDSA(hashes.SHA256()))
        key.public_key().verify(sig, data, ec.ECDSA(hashes.SHA256()))


def test_tpmtls_signature_verifies_with_openssl(cli, tpm, tmp_path: Path):
    """A signature made through the tpmtls key object verifies with plain `openssl dgst`."""
    require("openssl")
    key = tmp_path / "k.key"
    cli("key", "create", "--alg", "ecc-p256", "--out", str(key))
    pub = tmp_path / "k.pub"
    pub.write_text(cli("key", "show", str(key), "--pubout").stdout)
    data = tmp_path / "data"
    data.write_bytes(b"payload")
    k = tpm.load_key(key)
    (tmp_path / "sig").write_bytes(k.sign(b"payload", ec.ECDSA(hashes.SHA256())))
    out = openssl("dgst", "-sha256", "-verify", str(pub), "-signature", str(tmp_path / "sig"), str(data)).stdout
    assert b"Verified OK" in out
