"""EVP_PKEY_sign on a TPM key through the system OpenSSL's C API: parameters are honoured or refused.

TLS only ever uses a few parameter combinations; other OpenSSL users (and a re-used
signing context) reach the rest, so they are driven here through libcrypto itself.
"""

from __future__ import annotations

import ctypes
import hashlib

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

from tpmtls import provider


class OSSL_PARAM(ctypes.Structure):  # noqa: N801 - OpenSSL's struct name
    _fields_ = [("key", ctypes.c_char_p), ("data_type", ctypes.c_uint), ("data", ctypes.c_void_p),
                ("data_size", ctypes.c_size_t), ("return_size", ctypes.c_size_t)]


OSSL_PARAM_UTF8_STRING = 4


class Signer:
    """EVP_PKEY_sign with a TPM key file decoded by the system OpenSSL."""

    def __init__(self, key_path, tcti: str) -> None:
        provider.load_into_system_ssl()
        lib = provider.state.libcrypto
        for name, res, args in [
            ("BIO_new_mem_buf", ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_int]),
            ("BIO_free", ctypes.c_int, [ctypes.c_void_p]),
            ("PEM_read_bio_PrivateKey", ctypes.c_void_p, [ctypes.c_void_p] * 4),
            ("EVP_PKEY_free", None, [ctypes.c_void_p]),
            ("EVP_PKEY_CTX_new_from_pkey", ctypes.c_void_p, [ctypes.c_void_p] * 3),
            ("EVP_PKEY_CTX_free", None, [ctypes.c_void_p]),
            ("EVP_PKEY_sign_init", ctypes.c_int, [ctypes.c_void_p]),
            ("EVP_PKEY_CTX_set_params", ctypes.c_int, [ctypes.c_void_p, ctypes.POINTER(OSSL_PARAM)]),
            ("EVP_PKEY_sign", ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_size_t),
                                             ctypes.c_char_p, ctypes.c_size_t]),
            ("ERR_clear_error", None, []),
        ]:
            getattr(lib, name).restype = res
            getattr(lib, name).argtypes = args
        self.lib = lib
        pem = key_path.read_bytes()
        bio = lib.BIO_new_mem_buf(pem, len(pem))
        with provider.loading(str(key_path), tcti):
            self.pkey = lib.PEM_read_bio_PrivateKey(bio, None, None, None)
        lib.BIO_free(bio)
        assert self.pkey, provider.last_error()
        self.ctx = lib.EVP_PKEY_CTX_new_from_pkey(None, self.pkey, None)

    def init(self, **params: str) -> bool:
        """EVP_PKEY_sign_init, then the string params (e.g. digest, pad-mode, saltlen)."""
        assert self.lib.EVP_PKEY_sign_init(self.ctx) == 1
        if not params:
            return True
        values = [v.encode() for v in params.values()]
        array = (OSSL_PARAM * (len(params) + 1))()
        for slot, (name, value) in zip(array, zip(params, values, strict=True), strict=False):
            slot.key, slot.data_type = name.encode(), OSSL_PARAM_UTF8_STRING
            slot.data, slot.data_size = ctypes.cast(ctypes.c_char_p(value), ctypes.c_void_p), len(value)
        self._keep = values
        return self.lib.EVP_PKEY_CTX_set_params(self.ctx, array) == 1

    def sign(self, digest: bytes) -> bytes | None:
        provider.clear_error()
        out = ctypes.create_string_buffer(1024)
        size = ctypes.c_size_t(len(out))
        ok = self.lib.EVP_PKEY_sign(self.ctx, out, ctypes.byref(size), digest, len(digest))
        self.lib.ERR_clear_error()
        return out.raw[: size.value] if ok == 1 else None

    def close(self) -> None:
        self.lib.EVP_PKEY_CTX_free(self.ctx)
        self.lib.EVP_PKEY_free(self.pkey)


@pytest.fixture
def rsa_signer(tpm_client, test_tpm):
    signer = Signer(tpm_client["rsa2048"][1], test_tpm.tcti)
    yield signer
    signer.close()


@pytest.fixture
def ec_signer(tpm_client, test_tpm):
    signer = Signer(tpm_client["ecc-p256"][1], test_tpm.tcti)
    yield signer
    signer.close()


def _public(tpm, tpm_client, alg):
    return tpm.load_key(tpm_client[alg][1]).public_key()


def test_pss_auto_digestmax_signs_with_a_digest_length_salt(rsa_signer, tpm, tpm_client):
    digest = hashlib.sha256(b"auto-digestmax").digest()
    assert rsa_signer.init(digest="SHA256", **{"pad-mode": "pss", "saltlen": "auto-digestmax"})
    sig = rsa_signer.sign(digest)
    assert sig is not None, provider.last_error()
    pss = padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH)
    _public(tpm, tpm_client, "rsa2048").verify(sig, digest, pss, utils.Prehashed(hashes.SHA256()))


def test_unknown_salt_length_is_refused(rsa_signer):
    assert not rsa_signer.init(digest="SHA256", **{"pad-mode": "pss", "saltlen": "lots"})


def test_reinit_forgets_the_previous_padding(rsa_signer, tpm, tpm_client):
    """A re-used EVP_PKEY_CTX starts from the defaults (PKCS#1 v1.5), not the previous PSS settings."""
    digest = hashlib.sha256(b"re-init").digest()
    assert rsa_signer.init(digest="SHA256", **{"pad-mode": "pss", "saltlen": "max"})
    assert rsa_signer.sign(digest) is not None
    assert rsa_signer.init(digest="SHA256")
    sig = rsa_signer.sign(digest)
    assert sig is not None, provider.last_error()
    _public(tpm, tpm_client, "rsa2048").verify(sig, digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))


def test_a_digest_size_the_tpm_does_not_sign_is_named(ec_signer):
    assert ec_signer.init()
    assert ec_signer.sign(hashlib.sha224(b"x").digest()) is None
    message = provider.last_error() or ""
    assert "28-byte digest" in message and "internal error" not in message, message


def test_prehashed_digest_without_a_name_uses_its_size(ec_signer, tpm, tpm_client):
    digest = hashlib.sha384(b"by size").digest()
    assert ec_signer.init()
    sig = ec_signer.sign(digest)
    assert sig is not None, provider.last_error()
    _public(tpm, tpm_client, "ecc-p256").verify(sig, digest, ec.ECDSA(utils.Prehashed(hashes.SHA384())))
