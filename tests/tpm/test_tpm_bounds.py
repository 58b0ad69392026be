"""A stopped TPM or resource manager ends every TPM call in bounded time, with one clear line.

Run as users run it: `python -m tpmtls key create` as its own process against a SIGSTOPped
swtpm, with a small bound from $TPMTLS_TPM_TIMEOUT; the wall-clock limit is only the
subprocess timeout, a generous backstop (no timing assertion).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import contextmanager

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

import tpmtls
from support.commands import Cli

ECDSA = ec.ECDSA(hashes.SHA256())


@contextmanager
def stopped(pid: int | None):
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)  # so teardown (and the TPM) work again


@pytest.mark.parametrize("route", ["tabrmd", "direct swtpm", "device"])
def test_key_create_against_a_stopped_swtpm_ends_in_one_line(route, request, tmp_path):
    t = request.getfixturevalue("fresh_device_tpm" if route == "device" else "fresh_tpm")
    tcti = t.direct_tcti if route == "direct swtpm" else t.tcti
    cli = Cli({**t.env, "TPMTLS_TCTI": tcti, "TPMTLS_TPM_TIMEOUT": "2"}, tmp_path)
    with stopped(t.swtpm.pid):
        line = cli.fails("key", "create", "--alg", "ecc-p256", "--out", "k.key")  # one line, no traceback
    assert tcti in line and "did not answer within 2 s" in line
    assert not (tmp_path / "k.key").exists()
    cli("key", "create", "--alg", "ecc-p256", "--out", "k.key")  # and it works again once resumed


def test_stopped_abrmd_bounds_the_connect_too(fresh_tpm, tmp_path):
    cli = Cli({**fresh_tpm.env, "TPMTLS_TPM_TIMEOUT": "2"}, tmp_path)
    with stopped(fresh_tpm.abrmd.pid):
        line = cli.fails("key", "create", "--alg", "ecc-p256", "--out", "k.key")
    assert fresh_tpm.tcti in line


def test_tpm2_tss_tcti_bounded_by_a_worker_thread(fresh_tpm, tmp_path):
    """A TCTI tpmtls does not speak itself (here tpm2-tss's own swtpm module, named by file).

    The operation runs in a worker thread joined for the bound itself (not a multiple of
    it: the message names the setting, so it must be the setting).
    """
    native = "libtss2-tcti-swtpm.so.0:" + fresh_tpm.direct_tcti.split(":", 1)[1]
    pool = tpmtls.Pool(native, size=1, timeout=1)
    try:
        key = tpmtls.connect(pool=pool).create_key("ecc-p256")
        key.public_key().verify(key.sign(b"m", ECDSA), b"m", ECDSA)
        with stopped(fresh_tpm.swtpm.pid):
            with pytest.raises(tpmtls.TpmUnavailable, match="did not answer within 1 s") as err:
                key.sign(b"m", ECDSA)
        assert native in str(err.value) and "\n" not in str(err.value)
        # the abandoned context is never used again: the next signature opens a new one
        key.public_key().verify(key.sign(b"again", ECDSA), b"again", ECDSA)
    finally:
        pool.close()


def test_timeout_setting_is_checked():
    with pytest.raises(tpmtls.TpmtlsError, match="positive number of seconds"):
        tpmtls.Pool("swtpm:port=1", timeout=0)
    env = {**os.environ, "TPMTLS_TPM_TIMEOUT": "soon"}
    proc = subprocess.run([sys.executable, "-c", "import tpmtls; tpmtls.Pool('swtpm:port=1')"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "TPMTLS_TPM_TIMEOUT='soon'" in proc.stderr


GLIB_SCRIPT = r"""
import sys
import tpmtls
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

pool = tpmtls.Pool(sys.argv[1], size=2, reconnect_timeout=2, timeout=5)
key = tpmtls.connect(pool=pool).create_key("ecc-p256")
key.sign(b"m", ec.ECDSA(hashes.SHA256()))
print("ready", flush=True)
sys.stdin.readline()  # the test kills tpm2-abrmd now
failures = []
for i in range(5):
    try:
        key.sign(b"m", ec.ECDSA(hashes.SHA256()))
    except tpmtls.TpmUnavailable as e:
        failures.append(str(e))
print(f"{len(failures)} failed", flush=True)
sys.stderr.write(failures[-1] + "\n")
sys.exit(1)
"""


def test_resource_manager_outage_prints_no_glib_noise(fresh_tpm, tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", GLIB_SCRIPT, fresh_tpm.tcti], env={**os.environ, **fresh_tpm.env},
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "ready"
        fresh_tpm.abrmd.kill()
        out, err = proc.communicate("go\n", timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1
    assert out.strip() == "5 failed"
    lines = err.strip().splitlines()
    assert len(lines) == 1, err  # our one line: no GLib WARNING/CRITICAL lines from a tabrmd TCTI
    assert fresh_tpm.tcti in lines[0]
