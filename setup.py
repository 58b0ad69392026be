"""Builds the OpenSSL shim provider (tpmtls/provider/*.c) with the package.

It is a plain shared object loaded by OpenSSL and by ctypes, not a Python module:
it uses OpenSSL's headers (libssl-dev) but links no libcrypto, because the same
image serves cryptography's OpenSSL 4.x and the system's 3.0.x.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "tpmtls.provider._shim",
            sources=[
                "tpmtls/provider/shim_core.c",
                "tpmtls/provider/shim_params.c",
                "tpmtls/provider/shim_keymgmt.c",
                "tpmtls/provider/shim_signature.c",
                "tpmtls/provider/shim_decoder.c",
            ],
            depends=["tpmtls/provider/shim.h"],
            extra_compile_args=["-std=c11", "-D_GNU_SOURCE", "-fvisibility=hidden", "-Wall", "-Wextra",
                                "-Wno-unused-parameter", "-Werror"],
        )
    ]
)
