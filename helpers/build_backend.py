"""setuptools' PEP 517 backend, plus one check first: can this machine compile what tpmtls needs?

Without it a missing libssl-dev ends in a hundred lines of setuptools log and a missing
libtss2-dev in a traceback from tpm2-pytss's build (no wheel of it on PyPI). Here a build
that cannot work stops before anything runs, with one line naming the missing headers and
the packages that carry them. An sdist needs no compiler, so only wheel builds are checked.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403 - this module is that backend, with a check added

# (header, what needs it, Debian/Ubuntu package, Fedora package)
OPENSSL = ("openssl/core_dispatch.h", "OpenSSL 3 headers, for the shim provider", "libssl-dev", "openssl-devel")
TSS2 = ("tss2/tss2_esys.h", "TSS2 headers, for tpm2-pytss: PyPI has no wheel of it", "libtss2-dev", "tpm2-tss-devel")


def _compiler() -> list[str]:
    """The C compiler setuptools will use: $CC, else the one Python was built with."""
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return shlex.split(cc)


def _has_header(cc: list[str], header: str, flags: list[str]) -> bool:
    probe = subprocess.run([*cc, *flags, "-E", "-x", "c", "-o", os.devnull, "-"],
                           input=f"#include <{header}>\n", capture_output=True, text=True, check=False)
    return probe.returncode == 0


def missing_build_requirements() -> str | None:
    """One line saying what to install, or None when the build can go ahead."""
    cc = _compiler()
    if shutil.which(cc[0]) is None:
        return f"no C compiler ({cc[0]}): install build-essential (Debian/Ubuntu) or gcc (Fedora)"
    flags = shlex.split(os.environ.get("CPPFLAGS", "")) + shlex.split(os.environ.get("CFLAGS", ""))
    needed = [OPENSSL]
    if importlib.util.find_spec("tpm2_pytss") is None:
        needed.append(TSS2)
    missing = [n for n in needed if not _has_header(cc, n[0], flags)]
    if not missing:
        return None
    what = " and ".join(f"{n[0]} ({n[1]})" for n in missing)
    return (f"missing {what}: install {' '.join(n[2] for n in missing)} (Debian/Ubuntu) "
            f"or {' '.join(n[3] for n in missing)} (Fedora)")


def _check() -> None:
    problem = missing_build_requirements()
    if problem:
        print(f"tpmtls: cannot build: {problem}", file=sys.stderr, flush=True)
        raise SystemExit(1)


def get_requires_for_build_wheel(config_settings=None):  # type: ignore[no-untyped-def]
    _check()
    return _setuptools.get_requires_for_build_wheel(config_settings)


def get_requires_for_build_editable(config_settings=None):  # type: ignore[no-untyped-def]
    _check()
    return _setuptools.get_requires_for_build_editable(config_settings)


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):  # type: ignore[no-untyped-def]
    _check()
    return _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):  # type: ignore[no-untyped-def]
    _check()
    return _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
