"""Running things as users do: the CLI as its own process, the system openssl, skips only for absent binaries."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def require(*binaries: str) -> None:
    """Skip only when a binary is genuinely absent (`make setup` installs them all)."""
    for b in binaries:
        if shutil.which(b) is None:
            pytest.skip(f"{b} is not installed (run 'make setup')")


class Cli:
    """Runs `python -m tpmtls …` as a user would, with the test TPM in the environment."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env = {**os.environ, **env}
        self.env.pop("OPENSSL_CONF", None)
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
        proc = self(*args, check=False, env=env)
        assert proc.returncode != 0, f"tpmtls {' '.join(args)} succeeded: {proc.stdout}"
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, f"expected one line on stderr, got: {proc.stderr!r}"
        assert "Traceback" not in proc.stderr
        return lines[0]


def openssl(*args: str, env: dict[str, str] | None = None, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """The system `openssl` (tpm2-openssl provider available), never with our OPENSSL_CONF."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("OPENSSL_CONF", None)
    proc = subprocess.run(["openssl", *args], env=full_env, capture_output=True, input=input, timeout=120)
    if proc.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} failed: {proc.stderr.decode(errors='replace')}")
    return proc
