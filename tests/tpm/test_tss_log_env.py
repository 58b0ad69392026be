"""tpm2-tss's log lines stay off stderr, and tpmtls leaves TSS2_LOG out of the environment."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = r"""
import os, subprocess, sys
import tpmtls
assert "TSS2_LOG" not in os.environ, "import tpmtls set TSS2_LOG"
tpm = tpmtls.connect()
tpm.create_key("ecc-p256", "k.key", password="right")
assert "TSS2_LOG" not in os.environ, "a TPM operation left TSS2_LOG set"
child = subprocess.run([sys.executable, "-c", "import os; print(os.environ.get('TSS2_LOG'))"],
                       capture_output=True, text=True, timeout=60)
assert child.returncode == 0 and child.stdout.strip() == "None", child.stdout
try:
    tpm.load_key("k.key", password="wrong")  # the TPM answers AUTH_FAIL: tpm2-tss would log it
except tpmtls.KeyAuthError as e:
    sys.stderr.write(f"{e}\n")
    sys.exit(1)
"""


def run(test_tpm, tmp_path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **test_tpm.env, **extra}
    env.pop("TSS2_LOG", None)
    env.update(extra)
    return subprocess.run([sys.executable, "-c", SCRIPT], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def test_environment_untouched_and_no_tss_log_lines(test_tpm, tmp_path):
    proc = run(test_tpm, tmp_path)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr  # only our error: no WARNING:esys / ERROR:esys lines
    assert "wrong password" in lines[0] and "rc 0x" in lines[0]


def test_a_users_tss2_log_is_respected(test_tpm, tmp_path):
    script_env = {"TSS2_LOG": "esys+error"}
    env = {**os.environ, **test_tpm.env, **script_env}
    proc = subprocess.run([sys.executable, "-c", "import os, tpmtls; tpmtls.connect().info();"
                           "print(os.environ['TSS2_LOG'])"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "esys+error"
