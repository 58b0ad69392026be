"""The system OpenSSL (3.0.x, behind the stdlib ssl module): the shim is loaded on demand.

Its symbols are public, so `OSSL_PROVIDER_add_builtin` + `OSSL_PROVIDER_load` through
ctypes work at any time, even after `import ssl` (docs/facts-openssl.md, "Two OpenSSLs in
one Python process").
"""

from __future__ import annotations

import ctypes
from typing import Iterator


def _candidates() -> Iterator[str]:
    """OpenSSL 3's soname first (already mapped by `_ssl`: dlopen finds it at once); then what
    ctypes.util finds, which runs `ldconfig -p` in a subprocess (milliseconds at every start)."""
    yield "libcrypto.so.3"
    import ctypes.util

    found = ctypes.util.find_library("crypto")
    if found:
        yield found


class SystemOpenSSL:
    """The libcrypto behind `ssl`, with the few provider functions tpmtls calls."""

    def __init__(self) -> None:
        import _ssl  # the stdlib's OpenSSL: make sure it is mapped, then find it by soname

        self.version = _ssl.OPENSSL_VERSION
        for name in _candidates():
            try:
                lib = ctypes.CDLL(name)
            except OSError:
                continue
            lib.OpenSSL_version.restype = ctypes.c_char_p
            lib.OpenSSL_version.argtypes = [ctypes.c_int]
            if lib.OpenSSL_version(0).decode() == self.version:
                break
        else:
            raise OSError(f"cannot find the libcrypto behind the ssl module ({self.version})")
        lib.OSSL_PROVIDER_available.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.OSSL_PROVIDER_load.restype = ctypes.c_void_p
        lib.OSSL_PROVIDER_load.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.OSSL_PROVIDER_add_builtin.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
        lib.OSSL_PROVIDER_get0_provider_ctx.restype = ctypes.c_void_p
        lib.OSSL_PROVIDER_get0_provider_ctx.argtypes = [ctypes.c_void_p]
        lib.EVP_KEYMGMT_fetch.restype = ctypes.c_void_p
        lib.EVP_KEYMGMT_fetch.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
        lib.EVP_KEYMGMT_free.argtypes = [ctypes.c_void_p]
        lib.ERR_get_error.restype = ctypes.c_ulong
        lib.ERR_error_string_n.argtypes = [ctypes.c_ulong, ctypes.c_char_p, ctypes.c_size_t]
        self.lib = lib

    def load(self, name: bytes, init: ctypes.c_void_p) -> int | None:
        """Register the shim's init function as a built-in provider and load it; the handle or
        None (then `errors()` says why)."""
        # Loading any provider explicitly stops OpenSSL from loading the default one by
        # itself; make sure it is there so software keys, digests and ciphers keep working.
        if not self.lib.OSSL_PROVIDER_available(None, b"default"):
            self.lib.OSSL_PROVIDER_load(None, b"default")
        self.lib.OSSL_PROVIDER_add_builtin(None, name, init)
        handle = self.lib.OSSL_PROVIDER_load(None, name)
        return int(handle) if handle else None

    def errors(self) -> list[str]:
        """OpenSSL's error queue of this thread, oldest first, emptied (bounded: at most 16)."""
        found = []
        for _ in range(16):
            code = self.lib.ERR_get_error()
            if not code:
                break
            text = ctypes.create_string_buffer(256)
            self.lib.ERR_error_string_n(code, text, len(text))
            found.append(text.value.decode(errors="replace"))
        return found

    def provider_ctx(self, handle: int) -> int:
        """The provider's own context (what its OSSL_provider_init returned) for a loaded provider."""
        return int(self.lib.OSSL_PROVIDER_get0_provider_ctx(handle) or 0)

    def fetch_key_managers(self, names: tuple[bytes, ...]) -> None:
        """Fetch each key manager once from any provider, as `SSL_CTX_new` does.

        Right after a provider is activated OpenSSL's method cache is empty, and the first
        fetch of a name decides what every later fetch of it from any provider gets; done
        here, that is the default provider's (docs/provider.md, "Keys sign through an
        active provider").
        """
        for name in names:
            keymgmt = self.lib.EVP_KEYMGMT_fetch(None, name, None)
            if keymgmt:
                self.lib.EVP_KEYMGMT_free(keymgmt)
