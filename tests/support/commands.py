"""Running things as users do: the CLI as its own process, the system openssl, skips only for absent binaries."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tpmtls.lab.process import child_env


def require(*binaries: str) -> None:
    """Skip only when a binary is genuinely absent (`make setup` installs them all)."""
    for b in binaries:
        if shutil.which(b) is None:
            pytest.skip(f"{b} is not installed (run 'make setup')")


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a command that must fail: non-zero exit, no traceback."""
    assert proc.returncode != 0, f"{' '.join(map(str, proc.args))} succeeded: {proc.stdout}"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, f"expected one line on stderr, got: {proc.stderr!r}"
    return lines[0]


class Cli:
    """Runs `python -m tpmtls …` as a user would, with the test TPM in the environment."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env = child_env(env)
        self.cwd = cwd

    def __call__(self, *args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "tpmtls", *args],
            cwd=self.cwd,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"tpmtls {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
        for crash in ("Traceback", "Exception ignored", "Fatal Python error"):
            assert crash not in proc.stderr, f"tpmtls {' '.join(args)}: {proc.stderr}"
        return proc

    def fails(self, *args: str, env: dict[str, str] | None = None) -> str:
        """Run a command that must fail: non-zero exit, exactly one line on stderr, no traceback."""
        return one_line(self(*args, check=False, env=env))


def openssl(*args: str, env: dict[str, str] | None = None, input: bytes | None = None,
            check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """The system `openssl` (tpm2-openssl provider available), never with our OPENSSL_CONF."""
    proc = subprocess.run(["openssl", *args], env=child_env(env), capture_output=True, input=input, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} failed: {proc.stderr.decode(errors='replace')}")
    return proc
