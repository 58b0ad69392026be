"""One rule for "is this a TPM key file?": TSS2 keys and the handle form, PEM and DER, and
every place that asks (Docker's files, the CA, the TLS key loader, the provider) agrees."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tpmtls.errors import KeyFileError
from tpmtls.tpm.keyfile import handle_pem, is_tpm_key, is_tpm_key_file, parse_key_bytes, tpm_key_der

HANDLE = 0x81000042


def der_of(pem: bytes) -> bytes:
    body = re.search(rb"-----BEGIN [A-Z0-9 ]+-----\n(.*?)-----END", pem, re.S)
    assert body is not None
    return base64.b64decode(b"".join(body.group(1).split()))


@pytest.fixture(scope="module")
def tss2_pem(tpm, tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("detect") / "client.key"
    tpm.create_key("ecc-p256", path)
    return path.read_bytes()


def software_keys() -> dict[str, bytes]:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    enc = serialization.Encoding
    fmt = serialization.PrivateFormat
    none = serialization.NoEncryption()
    return {
        "pkcs8-pem": ec_key.private_bytes(enc.PEM, fmt.PKCS8, none),
        "pkcs8-der": ec_key.private_bytes(enc.DER, fmt.PKCS8, none),
        "sec1-pem": ec_key.private_bytes(enc.PEM, fmt.TraditionalOpenSSL, none),
        "sec1-der": ec_key.private_bytes(enc.DER, fmt.TraditionalOpenSSL, none),
        "pkcs1-der": rsa_key.private_bytes(enc.DER, fmt.TraditionalOpenSSL, none),
        "empty": b"",
        "text": b"not a key at all\n",
    }


def test_tss2_key_pem_and_der(tss2_pem):
    der = der_of(tss2_pem)
    assert is_tpm_key(tss2_pem) and is_tpm_key(der)
    assert tpm_key_der(tss2_pem) == der
    assert tpm_key_der(der) == der
    assert parse_key_bytes(der).public == parse_key_bytes(tss2_pem).public


def test_handle_form_pem_and_der():
    pem = handle_pem(HANDLE, b"\x00\x0b" + b"n" * 32)
    der = der_of(pem)
    assert is_tpm_key(pem) and is_tpm_key(der)
    assert tpm_key_der(pem) == der
    assert parse_key_bytes(der).handle == HANDLE


@pytest.mark.parametrize("name, data", software_keys().items(), ids=list(software_keys()))
def test_software_keys_are_not_tpm_keys(name, data):
    assert not is_tpm_key(data)
    assert tpm_key_der(data) is None


def test_damaged_tpm_pem_still_counts_and_names_the_damage(tss2_pem):
    """The label says what the file is meant to be: the parser, not the detector, reports damage."""
    lines = tss2_pem.splitlines(keepends=True)
    damaged = lines[0] + b"!!!!" + lines[1][4:] + b"".join(lines[2:])
    assert is_tpm_key(damaged)
    with pytest.raises(KeyFileError, match="damaged.key: damaged PEM"):
        tpm_key_der(damaged, "damaged.key")
    truncated = tss2_pem[: len(tss2_pem) // 2]
    assert is_tpm_key(truncated)
    with pytest.raises(KeyFileError, match="truncated PEM"):
        tpm_key_der(truncated, "cut.key")


def test_tpm_block_after_a_certificate(tss2_pem, pki):
    """A certificate first, then the key (one file for both): the key block is found and loads."""
    combined = Path(pki.ca_file).read_bytes() + tss2_pem
    assert is_tpm_key(combined)
    assert tpm_key_der(combined) == der_of(tss2_pem)
    assert parse_key_bytes(combined).public == parse_key_bytes(tss2_pem).public


def test_file_form(tss2_pem, tmp_path: Path):
    (tmp_path / "k.der").write_bytes(der_of(tss2_pem))
    (tmp_path / "soft.key").write_bytes(software_keys()["pkcs8-pem"])
    assert is_tpm_key_file(tmp_path / "k.der")
    assert not is_tpm_key_file(tmp_path / "soft.key")
    assert not is_tpm_key_file(tmp_path / "missing.key")
    assert not is_tpm_key_file(tmp_path)  # a directory: unreadable as a file


def test_every_caller_uses_the_one_rule():
    """No second detector: only the key-file module matches the labels in key bytes."""
    root = Path(__file__).resolve().parents[2] / "tpmtls"
    in_bytes = re.compile(r"""\br?b["'][^"'\n]*(TSS2 PRIVATE KEY|TPMTLS KEY HANDLE)""")
    offenders = [f"{path.relative_to(root)}: {m.group(0)}" for path in sorted(root.rglob("*.py"))
                 if path != root / "tpm" / "keyfile.py" for m in in_bytes.finditer(path.read_text())]
    assert offenders == []
