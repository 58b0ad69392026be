"""TPM keys are cryptography private keys: every padding and hash, certificates, no export."""

from __future__ import annotations

import datetime
import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.x509.oid import NameOID

import tpmtls
from tpmtls.tpm.keys import emsa_pss_encode

HASHES = [hashes.SHA256(), hashes.SHA384(), hashes.SHA512()]


@pytest.fixture(scope="module")
def rsa_key(tpm):
    return tpm.create_key("rsa2048")


@pytest.fixture(scope="module")
def ec_keys(tpm):
    return {alg: tpm.create_key(alg) for alg in ("ecc-p256", "ecc-p384")}


def test_types_and_sizes(rsa_key, ec_keys, tpm):
    assert isinstance(rsa_key, rsa.RSAPrivateKey) and rsa_key.key_size == 2048
    assert isinstance(ec_keys["ecc-p256"], ec.EllipticCurvePrivateKey)
    assert ec_keys["ecc-p256"].curve.name == "secp256r1" and ec_keys["ecc-p384"].key_size == 384
    assert tpm.create_key("rsa3072").key_size == 3072


@pytest.mark.parametrize("h", HASHES, ids=lambda h: h.name)
def test_rsa_pkcs1_and_pss(rsa_key, h):
    pub = rsa_key.public_key()
    sig = rsa_key.sign(b"data", padding.PKCS1v15(), h)
    pub.verify(sig, b"data", padding.PKCS1v15(), h)
    for salt in (padding.PSS.DIGEST_LENGTH, padding.PSS.MAX_LENGTH, 20):
        pss = padding.PSS(padding.MGF1(h), salt)
        sig = rsa_key.sign(b"data", pss, h)
        pub.verify(sig, b"data", padding.PSS(padding.MGF1(h), padding.PSS.AUTO), h)


def test_rsa_pss_with_tls13_salt_uses_tpm_pss(rsa_key):
    """TLS 1.3 needs salt = digest length; swtpm's own PSS does that (checked once)."""
    pss = padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH)
    sig = rsa_key.sign(b"tls13", pss, hashes.SHA256())
    rsa_key.public_key().verify(sig, b"tls13", pss, hashes.SHA256())
    assert rsa_key.pool.pss.digest_salt is True


def test_forced_raw_pss_fallback(test_tpm, monkeypatch):
    """The raw-RSA fallback for TPMs with another PSS salt, forced by its switch."""
    monkeypatch.setenv("TPMTLS_FORCE_RAW_PSS", "1")
    pool = tpmtls.Pool(test_tpm.tcti, size=1)
    try:
        key = tpmtls.connect(pool=pool).create_key("rsa2048")
        pss = padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH)
        sig = key.sign(b"tls13", pss, hashes.SHA256())
        key.public_key().verify(sig, b"tls13", pss, hashes.SHA256())
        stats = pool.stats()
        assert (stats.signatures, stats.decryptions) == (0, 1)  # one raw RSA operation, no TPM2_Sign
    finally:
        pool.close()


def test_emsa_pss_encoding_matches_rfc8017():
    """Our encoder against cryptography's verifier, on a software key (raw RSA by hand)."""
    soft = rsa.generate_private_key(65537, 2048)
    n, d = soft.public_key().public_numbers().n, soft.private_numbers().d
    digest = hashlib.sha384(b"x").digest()
    em = emsa_pss_encode(digest, hashes.SHA384(), hashes.SHA384(), 48, 2048)
    sig = pow(int.from_bytes(em, "big"), d, n).to_bytes(256, "big")
    soft.public_key().verify(sig, b"x", padding.PSS(padding.MGF1(hashes.SHA384()), 48), hashes.SHA384())


@pytest.mark.parametrize("h", HASHES, ids=lambda h: h.name)
def test_rsa_oaep_decrypt(rsa_key, h):
    oaep = padding.OAEP(padding.MGF1(h), h, None)
    assert rsa_key.decrypt(rsa_key.public_key().encrypt(b"secret", oaep), oaep) == b"secret"
    ct = rsa_key.public_key().encrypt(b"secret", padding.PKCS1v15())
    assert rsa_key.decrypt(ct, padding.PKCS1v15()) == b"secret"


@pytest.mark.parametrize("alg", ["ecc-p256", "ecc-p384"])
@pytest.mark.parametrize("h", HASHES, ids=lambda h: h.name)
def test_ecdsa(ec_keys, alg, h):
    key = ec_keys[alg]
    sig = key.sign(b"data", ec.ECDSA(h))
    key.public_key().verify(sig, b"data", ec.ECDSA(h))
    r, s = utils.decode_dss_signature(sig)
    assert r > 0 and s > 0


def test_prehashed(rsa_key, ec_keys):
    digest = hashlib.sha256(b"data").digest()
    sig = ec_keys["ecc-p256"].sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    ec_keys["ecc-p256"].public_key().verify(sig, b"data", ec.ECDSA(hashes.SHA256()))
    sig = rsa_key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
    rsa_key.public_key().verify(sig, b"data", padding.PKCS1v15(), hashes.SHA256())
    with pytest.raises(ValueError, match="prehashed digest is 5 bytes"):
        rsa_key.sign(b"short", padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))


def test_private_material_never_leaves(rsa_key, ec_keys):
    for key in (rsa_key, *ec_keys.values()):
        with pytest.raises(tpmtls.KeyNotExportable, match="cannot be serialized"):
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
        with pytest.raises(tpmtls.KeyNotExportable, match="cannot be exported"):
            key.private_numbers()


@pytest.mark.parametrize("alg", ["ecc-p256", "rsa2048"])
def test_self_signed_certificate(tpm, alg):
    key = tpm.create_key(alg)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tpm")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert.verify_directly_issued_by(cert)
    assert cert.public_key() == key.public_key()


@pytest.mark.parametrize("alg", ["ecc-p256", "ecc-p384", "rsa2048"])
def test_create_load_sign_on_each_path(alg, any_tpm, tmp_path):
    """The core on tpm2-abrmd and on /dev/tpmrm0: create to a file, load it in another pool, sign, verify."""
    with tpmtls.Pool(any_tpm.tcti, size=2) as pool:
        made = tpmtls.connect(pool=pool).create_key(alg, tmp_path / "k.key")
    with tpmtls.Pool(any_tpm.tcti, size=2) as pool:
        key = tpmtls.connect(pool=pool).load_key(tmp_path / "k.key")
        assert key.public_key() == made.public_key()
        if isinstance(key, rsa.RSAPrivateKey):
            for pad in (padding.PKCS1v15(), padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH)):
                key.public_key().verify(key.sign(b"data", pad, hashes.SHA256()), b"data", pad, hashes.SHA256())
        else:
            key.public_key().verify(key.sign(b"data", ec.ECDSA(hashes.SHA256())), b"data", ec.ECDSA(hashes.SHA256()))
        assert pool.stats().errors == 0 and pool.stats().rebuilds == 0
