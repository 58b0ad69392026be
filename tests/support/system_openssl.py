"""Looking into the system OpenSSL (behind `ssl`) through the libcrypto tpmtls loaded the shim into."""

from __future__ import annotations

import ctypes

from tpmtls import provider


def libcrypto() -> ctypes.CDLL:
    """The system libcrypto, with the few extra functions the tests call declared."""
    lib = provider.state.libcrypto
    assert lib is not None, "the shim was never in the system OpenSSL"
    lib.EVP_KEYMGMT_fetch.restype = ctypes.c_void_p
    lib.EVP_KEYMGMT_fetch.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
    lib.EVP_KEYMGMT_get0_provider.restype = ctypes.c_void_p
    lib.EVP_KEYMGMT_get0_provider.argtypes = [ctypes.c_void_p]
    lib.OSSL_PROVIDER_get0_name.restype = ctypes.c_char_p
    lib.OSSL_PROVIDER_get0_name.argtypes = [ctypes.c_void_p]
    lib.EVP_KEYMGMT_free.argtypes = [ctypes.c_void_p]
    lib.BIO_new_file.restype = ctypes.c_void_p
    lib.BIO_new_file.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    lib.BIO_free.argtypes = [ctypes.c_void_p]
    lib.PEM_read_bio_PrivateKey.restype = ctypes.c_void_p
    lib.PEM_read_bio_PrivateKey.argtypes = [ctypes.c_void_p] * 4
    lib.EVP_PKEY_free.argtypes = [ctypes.c_void_p]
    return lib


def keymgmt_provider(name: bytes) -> str:
    """The provider the system OpenSSL gives for a fetch of key manager `name` from any provider.

    Looked up without loading anything: activating a provider empties OpenSSL's method cache.
    """
    lib = libcrypto()
    keymgmt = lib.EVP_KEYMGMT_fetch(None, name, None)
    assert keymgmt, name
    try:
        return lib.OSSL_PROVIDER_get0_name(lib.EVP_KEYMGMT_get0_provider(keymgmt)).decode()
    finally:
        lib.EVP_KEYMGMT_free(keymgmt)


def read_private_key(path: str, tcti: str | None) -> None:
    """Read a key file with OpenSSL's plain PEM API (TPM keys through the shim, with `tcti`), then free it."""
    lib = libcrypto()
    bio = lib.BIO_new_file(path.encode(), b"r")
    assert bio, path
    try:
        with provider.loading(path, tcti):
            pkey = lib.PEM_read_bio_PrivateKey(bio, None, None, None)
    finally:
        lib.BIO_free(bio)
    assert pkey, provider.last_error() or path
    lib.EVP_PKEY_free(pkey)
