"""The default TCTI, a TPM device (/dev/tpmrm0), on the lab's stand-in: few objects, few commands, clear errors.

Each test names the defect it guards against; the commands are counted at the
TPM (the lab's forwarder, with no delay added), not inferred.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

import tpmtls
from support.commands import Cli, require
from support.device import require_device
from tpmtls.testing import TestTpm, TpmTiming
from tpmtls.tpm.tcti import is_direct

ECDSA = ec.ECDSA(hashes.SHA256())
SWAP = ("ContextLoad", "ContextSave", "FlushContext")


def counting() -> TpmTiming:
    """A forwarder that only counts: no command is delayed."""
    return TpmTiming(durations={}, other=0.0)


def device(tmp_path, **options):
    require_device()
    from tpmtls.lab.tpmrm import DeviceTpm

    return DeviceTpm(tmp_path / "device", **options)


def commands_since(t, before: dict[str, int]) -> dict[str, int]:
    """TPM commands since `before`, once the resource manager has saved what it loaded.

    tpm2-abrmd answers the client first and saves and flushes its objects after: wait
    (bounded) until every ContextLoad has its ContextSave.
    """
    for _ in range(100):
        spent = {k: v - before.get(k, 0) for k, v in t.latency.counts.items() if v - before.get(k, 0)}
        if spent.get("ContextSave", 0) >= spent.get("ContextLoad", 0):
            break
        time.sleep(0.02)
    return spent


def sign_and_verify(key, data: bytes = b"m") -> None:
    key.public_key().verify(key.sign(data, ECDSA), data, ECDSA)


# -- few objects: the kernel's three slots per open file -----------------------------------


@pytest.mark.parametrize("slots", [3, 2], ids=["kernel space", "TPM larger than the space"])
def test_three_keys_in_turn_on_one_context_never_rebuild(slots, tmp_path):
    """Was: a full space failed the load with ENOMEM, read as a lost TPM: 14 rebuilds and 15 CreatePrimary for 30
    signatures. (With three slots swtpm itself refuses the object first, TPM_RC_OBJECT_MEMORY; a space of two
    models a TPM with more slots than the kernel's space, where the kernel's ENOMEM comes first.)"""
    with device(tmp_path, object_slots=slots) as t:
        with tpmtls.Pool(t.tcti, size=1) as pool:
            keys = [tpmtls.connect(pool=pool).create_key("ecc-p256") for _ in range(3)]
            for i in range(10):
                for key in keys:
                    sign_and_verify(key, f"round {i}".encode())
            stats = pool.stats()
    assert (stats.rebuilds, stats.primaries, stats.errors) == (0, 1, 0)
    assert stats.signatures == 30


@pytest.fixture(params=["tabrmd", "device"])
def counted(request, tmp_path):
    """A TPM whose commands are counted, behind each resource manager."""
    if request.param == "tabrmd":
        require("swtpm", "tpm2-abrmd", "dbus-daemon")
        stack = TestTpm(tmp_path / "tabrmd", timing=counting())
    else:
        stack = device(tmp_path, timing=counting())
    with stack as t:
        yield t


def test_a_transient_key_costs_the_floor_per_signature(counted):
    """One key: TPM2_Sign and the resource manager's load, save and flush of that key alone (the SRK left its slot)."""
    with tpmtls.Pool(counted.tcti, size=1) as pool:
        key = tpmtls.connect(pool=pool).create_key("ecc-p256")
        sign_and_verify(key)
        before = dict(counted.latency.counts)
        for i in range(10):
            sign_and_verify(key, b"%d" % i)
        spent = commands_since(counted, before)
    assert spent == {"Sign": 10, "ContextLoad": 10, "ContextSave": 10, "FlushContext": 10}, spent


def test_a_persistent_key_costs_one_command_per_signature(counted):
    with tpmtls.Pool(counted.tcti, size=1) as pool:  # a TPM of this test's own: no clean-up
        tpmtls.connect(pool=pool).create_key("ecc-p256").persist(0x81000123)
    with tpmtls.Pool(counted.tcti, size=1) as pool:  # a process that signs with the persistent key
        key = tpmtls.connect(pool=pool).load_key("handle:0x81000123")
        sign_and_verify(key)
        before = dict(counted.latency.counts)
        for i in range(10):
            sign_and_verify(key, b"%d" % i)
        assert commands_since(counted, before) == {"Sign": 10}


# -- errors name the device, the errno's meaning and what to do -----------------------------


def test_permission_denied_says_tss_group_or_udev(tmp_path):
    """Was: 'cannot reach the TPM … IO failure (rc 0xa000a)' for every device failure."""
    with device(tmp_path, mode=0o600, owner=(65534, 65534)) as t:
        line = Cli(t.env, tmp_path).fails("key", "create", "--alg", "ecc-p256", "--out", "k.key")
    assert t.tcti.split(":", 1)[1] in line and "permission denied" in line
    assert "usermod -aG tss" in line and "udev rule" in line


def test_no_such_device_says_no_tpm_or_driver(tmp_path):
    missing = tmp_path / "dev" / "tpmrm0"
    line = Cli({"TPMTLS_TCTI": f"device:{missing}"}, tmp_path).fails("key", "create", "--alg", "ecc-p256", "--out", "k.key")
    assert str(missing) in line and "no such device" in line and "driver" in line


def test_a_held_direct_device_is_busy_and_says_who(tmp_path):
    """/dev/tpm0 serves one open file at a time: the second open fails EBUSY, retried within the bound."""
    with device(tmp_path, direct=True) as t:
        assert is_direct(t.tcti)
        with tpmtls.Pool(t.tcti) as pool:  # a pool of one, like any direct TPM
            assert pool.size == 1
            sign_and_verify(tpmtls.connect(pool=pool).create_key("ecc-p256"))
        held = os.open(t.tcti.split(":", 1)[1], os.O_RDWR)
        try:
            line = Cli({**t.env, "TPMTLS_TPM_TIMEOUT": "1"}, tmp_path).fails(
                "key", "create", "--alg", "ecc-p256", "--out", "k.key")
        finally:
            os.close(held)
    assert "another process holds it" in line and "fuser" in line


def test_direct_or_not_by_device_name():
    """Was: `device` with no path and /dev/tpm1 were not recognised."""
    assert is_direct("device:/dev/tpm0") and is_direct("device:/dev/tpm1")
    assert not is_direct("device:/dev/tpmrm0") and not is_direct("device:/dev/tpmrm1")
    if not os.path.exists("/dev/tpmrm0") and not os.path.exists("/dev/tpm0"):
        assert not is_direct("device")  # tpm2-tss's default order: /dev/tpmrm0 first
    with pytest.raises(tpmtls.TpmtlsError, match="pool size must be 1"):
        tpmtls.Pool("device:/dev/tpm1", size=2)


# -- bounded, and patient within the bound --------------------------------------------------
# (a frozen TPM on this path: tests/tpm/test_tpm_bounds.py, route "device"; was 4 × the bound)


def test_a_tpm_busy_for_seconds_delays_a_new_context_but_does_not_fail_it(tmp_path):
    """Was: tpm2-tss's device TCTI probes for 1 s when it opens, and the first open was not retried."""
    timing = TpmTiming(durations={"Create": 3.0}, other=0.0)
    with device(tmp_path, timing=timing) as t:
        with tpmtls.Pool(t.tcti, size=1) as busy, tpmtls.Pool(t.tcti, size=1) as fresh:
            busy_tpm = tpmtls.connect(pool=busy)
            busy_tpm.info()  # connected: the key creation below goes straight to the TPM
            creating = threading.Thread(target=busy_tpm.create_key, args=("ecc-p256",))
            creating.start()
            for _ in range(200):  # until the TPM is inside TPM2_Create (it holds the TPM 3 s)
                if t.latency.counts["CreatePrimary"]:
                    break
                time.sleep(0.02)
            time.sleep(0.3)
            info = tpmtls.connect(pool=fresh).info()  # a new context, opened while the TPM is busy
            creating.join(60)
        assert info.has_ecc and fresh.stats().errors == 0


# -- quiet: no tpm2-tss log line, ever ------------------------------------------------------

OUTAGES = r"""
import sys
import tpmtls
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

pool = tpmtls.Pool(sys.argv[1], size=2, reconnect_timeout=0.5, timeout=5)
key = tpmtls.connect(pool=pool).create_key("ecc-p256")
for outage in range(3):
    key.sign(b"m", ec.ECDSA(hashes.SHA256()))
    print("ready", flush=True)
    sys.stdin.readline()  # the test kills the TPM now
    try:
        key.sign(b"m", ec.ECDSA(hashes.SHA256()))
    except tpmtls.TpmUnavailable as e:
        sys.stderr.write(f"outage {outage}: {e}\n")
    print("failed", flush=True)
    sys.stdin.readline()  # and restarts it
print(f"rebuilds {pool.stats().rebuilds}", flush=True)
"""


def test_outages_and_rebuilds_print_no_tss_log_lines(tmp_path):
    """Was: 31 ERROR lines from tpm2-tss in one outage run (its TCTI reloaded with the default log level)."""
    with device(tmp_path) as t:
        proc = subprocess.Popen([sys.executable, "-c", OUTAGES, t.tcti], env={**os.environ, **t.env},
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdin is not None and proc.stdout is not None
        try:
            for _ in range(3):
                assert proc.stdout.readline().strip() == "ready"
                t.swtpm.kill()
                proc.stdin.write("go\n")
                proc.stdin.flush()
                assert proc.stdout.readline().strip() == "failed"
                t.swtpm.restart()
                proc.stdin.write("go\n")
                proc.stdin.flush()
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("outage ") and t.tcti in line for line in lines), err
    assert int(out.split()[-1]) >= 3  # every outage rebuilt the contexts
