"""Builds the OpenSSL shim provider (tpmtls/provider/*.c) into tpmtls/provider/_shim.so.

The shim is a plain shared object loaded by OpenSSL and by ctypes, not a Python module:
it uses OpenSSL's headers (libssl-dev) but links only libc (no libcrypto: the same image
serves cryptography's OpenSSL 4.x and the system's 3.0.x, and no libpython). So it is
named without the interpreter's ABI suffix and the wheel is tagged py3-none-<platform>:
one wheel per architecture serves every Python 3. The C sources go into the sdist only.
Missing compilers or headers are reported in one line before any of this runs
(helpers/build_backend.py).
"""

from setuptools import Extension, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_ext import build_ext

SHIM = "tpmtls.provider._shim"


class BuildShim(build_ext):
    """build_ext for a plain shared object: no ABI suffix, no Python library."""

    def get_ext_filename(self, fullname: str) -> str:
        return fullname.replace(".", "/") + ".so"

    def get_libraries(self, ext: Extension) -> list[str]:
        return list(ext.libraries)

    def get_export_symbols(self, ext: Extension) -> list[str]:
        return []  # no PyInit_*: OpenSSL looks for OSSL_provider_init, ctypes for tpmtls_*


class WheelForAnyPython3(bdist_wheel):
    """Tag py3-none-<platform>: the wheel carries native code but no CPython ABI."""

    def get_tag(self) -> tuple[str, str, str]:
        _, _, platform = super().get_tag()
        return "py3", "none", platform


setup(
    cmdclass={"build_ext": BuildShim, "bdist_wheel": WheelForAnyPython3},
    ext_modules=[
        Extension(
            SHIM,
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
    ],
)
