"""Building tpmtls on a machine without the compiler or headers it needs stops at once with one
line naming what is missing and the package that carries it (helpers/build_backend.py), instead
of a hundred lines of setuptools log or tpm2-pytss's traceback (docs/install.md, "With pip or pipx")."""

from __future__ import annotations

import os
import subprocess
import sys

from support import ROOT


def _pip_wheel(tmp_path, **env: str) -> tuple[int, list[str]]:
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path / "out"), str(ROOT)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**{k: v for k, v in os.environ.items() if k not in ("CC", "CFLAGS")}, **env})
    out = (proc.stdout + proc.stderr).splitlines()
    return proc.returncode, [line.strip() for line in out if "tpmtls: cannot build" in line or "lines of output" in line]


def test_missing_headers_are_named_with_their_packages(tmp_path):
    empty = tmp_path / "no-headers"
    empty.mkdir()
    # the compiler sees no system headers at all: as on a machine without libssl-dev and libtss2-dev
    code, lines = _pip_wheel(tmp_path, CFLAGS=f"-nostdinc -isystem {empty}")
    assert code != 0
    assert lines[0].endswith("[1 lines of output]")  # pip's frame around our single line
    assert lines[1] == (
        "tpmtls: cannot build: missing openssl/core_dispatch.h (OpenSSL 3 headers, for the shim provider) and "
        "tss2/tss2_esys.h (TSS2 headers, for tpm2-pytss: PyPI has no wheel of it): install libssl-dev libtss2-dev "
        "(Debian/Ubuntu) or openssl-devel tpm2-tss-devel (Fedora)")


def test_missing_compiler_is_named(tmp_path):
    code, lines = _pip_wheel(tmp_path, CC="/nonexistent/x86_64-linux-gnu-gcc")
    assert code != 0
    assert lines[1] == ("tpmtls: cannot build: no C compiler (/nonexistent/x86_64-linux-gnu-gcc): "
                        "install build-essential (Debian/Ubuntu) or gcc (Fedora)")
