"""Key transfer: a key wrapped to one TPM's EK imports and does TLS there, and only there."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import tpmtls
from support.commands import require
from support.tls_clients import client_subject, stdlib_get
from tpmtls.testing import TestTpm

PEM = serialization.Encoding.PEM


@pytest.fixture(scope="module")
def other_tpm(tmp_path_factory):
    """TPM #2: another machine's TPM, with its own endorsement seed."""
    require("swtpm", "tpm2-abrmd", "dbus-daemon")
    with TestTpm(tmp_path_factory.mktemp("tpm2")) as t:
        yield t


def _secret_bytes(key) -> list[bytes]:
    """The private scalar or primes, as the big-endian bytes a careless file would hold."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        d = key.private_numbers().private_value
        return [d.to_bytes((key.curve.key_size + 7) // 8, "big")]
    n = key.private_numbers()
    return [v.to_bytes((v.bit_length() + 7) // 8, "big") for v in (n.p, n.q, n.d)]


def _holds_clear_key(data: bytes, secrets: list[bytes]) -> bool:
    """Raw, or base64 in a PEM body (any alignment: try the three offsets)."""
    decoded = [data]
    body = b"".join(line for line in data.splitlines() if not line.startswith(b"-----"))
    for skip in range(4):
        try:
            decoded.append(base64.b64decode(body[skip:] + b"=" * (-len(body[skip:]) % 4)))
        except ValueError:
            pass
    # any 16-byte window of a secret is enough to call it leaked
    return any(s[i : i + 16] in d for s in secrets for i in range(0, len(s) - 15, 8) for d in decoded)


@pytest.mark.parametrize("alg", ["ecc-p256", "rsa2048"])
@pytest.mark.parametrize("ek_type", ["rsa", "ecc"])
def test_wrapped_key_does_tls_on_its_tpm_only(alg, ek_type, cli, test_tpm, other_tpm, pki, s_server, tmp_path):
    soft = ec.generate_private_key(ec.SECP256R1()) if alg == "ecc-p256" else rsa.generate_private_key(65537, 2048)
    owner = tmp_path / "owner"
    owner.mkdir()
    (owner / "client.pem").write_bytes(
        soft.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    cert = pki.issue(soft.public_key(), f"wrapped-{alg}", f"wrapped-{alg}-{ek_type}.crt")

    # machine #1 publishes its EK; the owner wraps without any TPM (no TCTI in the environment)
    out = cli("key", "ek", "--type", ek_type, "--out", "EK.pem").stdout
    assert "public key written to EK.pem" in out
    no_tpm = {"TPMTLS_TCTI": "swtpm:host=127.0.0.1,port=1", "TPM2TOOLS_TCTI": "swtpm:host=127.0.0.1,port=1"}
    # this test TPM has no EK certificate: the owner takes its EK on trust (test_key_wrap_trust.py checks one)
    cli("key", "wrap", str(owner / "client.pem"), "--ek", "EK.pem", "--ek-unverified", "--out", "client.blob", env=no_tpm)

    # machine #2 cannot import it: one clear line, no key file
    line = cli.fails("key", "import-wrapped", "client.blob", "--out", "other.key", env=other_tpm.env)
    assert line.startswith("tpmtls: client.blob: wrapped for another TPM"), line
    assert "tpmtls key ek" in line
    assert not (tmp_path / "other.key").exists()

    # machine #1 imports it: an ordinary TSS2 key file under the SRK ...
    cli("key", "import-wrapped", "client.blob", "--out", "client.key")
    shown = cli("key", "show", "client.key").stdout
    assert "parent: 0x40000001" in shown and "origin: imported" in shown
    # ... that signs a TLS handshake with openssl s_server, which checks the client certificate
    ctx = tpmtls.ssl_context(cert, tmp_path / "client.key", pki.ca_file, tcti=test_tpm.tcti)
    assert client_subject(stdlib_get(ctx, s_server.port)) == f"CN=wrapped-{alg}"

    # no file written on either side holds the clear key
    secrets = _secret_bytes(soft)
    assert _holds_clear_key((owner / "client.pem").read_bytes(), secrets)  # the check can see a leak
    for written in (tmp_path / "client.blob", tmp_path / "client.key", tmp_path / "EK.pem"):
        assert not _holds_clear_key(written.read_bytes(), secrets), written


def test_forged_ek_name_is_refused_by_the_tpm(cli, test_tpm, other_tpm, tmp_path):
    """A blob relabelled with TPM #2's EK name still fails there: the TPM cannot open the seed."""
    from tpmtls.tpm import transfer
    from tpmtls.tpm.ek_file import ek_target

    soft = ec.generate_private_key(ec.SECP256R1())
    pem = soft.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    ek1 = transfer.read_ek(tpmtls.connect(test_tpm.tcti))
    ek2 = transfer.read_ek(tpmtls.connect(other_tpm.tcti))
    blob = transfer.wrap_key(pem, ek_target(ek1.to_pem(), unverified=True))
    # rebuild the blob with TPM #2's EK name but TPM #1's seed
    w = transfer.parse_wrapped(blob)
    der = transfer.asn1.encode_der(transfer._WrappedDer(
        version=1, ek_type=w.ek_type.encode(), ek_name=ek2.name, public=w.public.marshal(),
        duplicate=w.duplicate.marshal(), seed=w.seed.marshal()))
    forged = (b"-----BEGIN TPMTLS WRAPPED KEY-----\n" + base64.encodebytes(der)
              + b"-----END TPMTLS WRAPPED KEY-----\n")
    (tmp_path / "forged.blob").write_bytes(forged)
    line = cli.fails("key", "import-wrapped", "forged.blob", "--out", "x.key", env=other_tpm.env)
    assert "forged.blob" in line and "the TPM refused it" in line, line
    assert not (tmp_path / "x.key").exists()


@pytest.mark.parametrize("content, expected", [
    (b"", "no PEM"),
    (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "is not a wrapped key"),
    (b"-----BEGIN TPMTLS WRAPPED KEY-----\nMAA=\n-----END TPMTLS WRAPPED KEY-----\n", "damaged wrapped key"),
])
def test_bad_blob_is_one_line(content, expected, cli, tmp_path):
    (tmp_path / "bad.blob").write_bytes(content)
    line = cli.fails("key", "import-wrapped", "bad.blob", "--out", "x.key")
    assert line.startswith("tpmtls: bad.blob:") and expected in line, line
    assert not (tmp_path / "x.key").exists()


def test_wrap_bad_inputs(cli, tmp_path: Path):
    soft = ec.generate_private_key(ec.SECP384R1())
    (tmp_path / "k.pem").write_bytes(soft.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (tmp_path / "notek.pem").write_bytes(soft.public_key().public_bytes(PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    line = cli.fails("key", "wrap", "k.pem", "--ek", "notek.pem", "--ek-unverified", "--out", "b")
    assert line == "tpmtls: notek.pem: not an EK public key (RSA-2048 or ECC P-256 expected)"
    line = cli.fails("key", "wrap", "k.pem", "--ek", "missing.pem", "--ek-unverified", "--out", "b")
    assert line.startswith("tpmtls: missing.pem: no such EK certificate file")
    cli("key", "ek", "--out", "EK.pem")
    line = cli.fails("key", "wrap", "EK.pem", "--ek", "EK.pem", "--ek-unverified", "--out", "b")
    assert line.startswith("tpmtls: EK.pem: not a PEM private key"), line
    assert not (tmp_path / "b").exists()


def _store_ek_certificate(tpm: TestTpm) -> tuple[bytes, bytes]:
    """Put a certificate for the RSA EK at its TCG NV index (0x01c00002), as TPM makers do: (its DER, the maker's
    root certificate PEM)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID
    from tpm2_pytss import ESAPI
    from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPMA_NV
    from tpm2_pytss.types import TPM2B_AUTH, TPM2B_NV_PUBLIC, TPMS_NV_PUBLIC

    from tpmtls.tpm import transfer

    ek = transfer.read_ek(tpmtls.connect(tpm.tcti))
    maker = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test TPM maker")])
    now = datetime.datetime.now(datetime.timezone.utc)
    der = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(name)
           .public_key(serialization.load_pem_public_key(ek.public.to_pem())).serial_number(1)
           .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
           .add_extension(x509.SubjectAlternativeName([x509.DirectoryName(name)]), critical=True)
           .sign(maker, hashes.SHA256()).public_bytes(serialization.Encoding.DER))
    root = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(maker.public_key())
            .serial_number(2).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(maker, hashes.SHA256()).public_bytes(PEM))
    esapi = ESAPI(tpm.tcti)
    try:
        attrs = TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD | TPMA_NV.AUTHREAD | TPMA_NV.AUTHWRITE | TPMA_NV.NO_DA
        public = TPM2B_NV_PUBLIC(nvPublic=TPMS_NV_PUBLIC(nvIndex=0x01C00002, nameAlg=TPM2_ALG.SHA256,
                                                         attributes=attrs, dataSize=len(der)))
        index = esapi.nv_define_space(TPM2B_AUTH(), public, ESYS_TR.OWNER)
        for offset in range(0, len(der), 512):
            esapi.nv_write(index, der[offset:offset + 512], offset, ESYS_TR.OWNER)
    finally:
        esapi.close()
    return der, root


def test_ek_file_carries_the_ek_certificate(cli, other_tpm, tmp_path):
    """`key ek` adds the EK certificate from NV; that two-block EK.pem is what `key wrap --ek-roots` takes."""
    from cryptography import x509

    der, root = _store_ek_certificate(other_tpm)
    (tmp_path / "maker.pem").write_bytes(root)
    out = cli("key", "ek", "--out", "EK.pem", env=other_tpm.env).stdout
    assert "(with its certificate)" in out
    text = (tmp_path / "EK.pem").read_bytes()
    assert text.count(b"-----BEGIN PUBLIC KEY-----") == 1 and text.count(b"-----BEGIN CERTIFICATE-----") == 1
    cert = x509.load_pem_x509_certificate(text[text.index(b"-----BEGIN CERTIFICATE-----"):])
    assert cert.public_bytes(serialization.Encoding.DER) == der
    assert cert.public_key() == serialization.load_pem_public_key(text)
    soft = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "k.pem").write_bytes(soft.private_bytes(PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
    cli("key", "wrap", "k.pem", "--ek", "EK.pem", "--ek-roots", "maker.pem", "--out", "k.blob")
    cli("key", "import-wrapped", "k.blob", "--out", "k.key", env=other_tpm.env)
    key = tpmtls.connect(other_tpm.tcti).load_key(tmp_path / "k.key")
    assert key.public_key() == soft.public_key()
