"""The system OpenSSL (3.0.x, behind the stdlib ssl module): the shim is loaded on demand.

Its symbols are public, so `OSSL_PROVIDER_add_builtin` + `OSSL_PROVIDER_load` through
ctypes work at any time, even after `import ssl` (docs/facts-openssl.md, "Two OpenSSLs in
one Python process").
"""

from __future__ import annotations

import ctypes
import ctypes.util


class SystemOpenSSL:
    """The libcrypto behind `ssl`, with the few provider functions tpmtls calls."""

    def __init__(self) -> None:
        import _ssl  # the stdlib's OpenSSL: make sure it is mapped, then find it by soname

        self.version = _ssl.OPENSSL_VERSION
        for name in filter(None, [ctypes.util.find_library("crypto"), "libcrypto.so.3"]):
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
        lib.OSSL_PROVIDER_unload.argtypes = [ctypes.c_void_p]
        self.lib = lib

    def load(self, name: bytes, init: ctypes.c_void_p) -> int | None:
        """Register the shim's init function as a built-in provider and load it; the handle or None."""
        # Loading any provider explicitly stops OpenSSL from loading the default one by
        # itself; make sure it is there so software keys, digests and ciphers keep working.
        if not self.lib.OSSL_PROVIDER_available(None, b"default"):
            self.lib.OSSL_PROVIDER_load(None, b"default")
        self.lib.OSSL_PROVIDER_add_builtin(None, name, init)
        handle = self.lib.OSSL_PROVIDER_load(None, name)
        return int(handle) if handle else None

    def unload(self, handle: int) -> None:
        self.lib.OSSL_PROVIDER_unload(handle)
