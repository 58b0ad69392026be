"""The hardware-paced test TPM adds the delay it claims, per command code, behind tpm2-abrmd."""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

import tpmtls
from support.commands import require
from tpmtls.testing import TestTpm, TpmTiming

SIGNATURES = 12


def _sign_time(tcti: str) -> float:
    with tpmtls.Pool(tcti, 1) as pool:
        key = tpmtls.connect(pool=pool).create_key("ecc-p256")
        key.sign(b"warm up", ec.ECDSA(hashes.SHA256()))  # SRK and key loaded: only signatures are timed
        started = time.perf_counter()
        for i in range(SIGNATURES):
            key.sign(b"message %d" % i, ec.ECDSA(hashes.SHA256()))
        return time.perf_counter() - started


@pytest.fixture
def slow_tpm(tmp_path):
    require("swtpm", "tpm2-abrmd", "dbus-daemon")
    with TestTpm(tmp_path / "slow", timing=TpmTiming.with_sign(60)) as t:
        yield t


def test_signatures_take_the_modelled_time(slow_tpm):
    slow = _sign_time(slow_tpm.tcti)
    assert slow_tpm.latency is not None
    assert slow_tpm.latency.counts["Sign"] == SIGNATURES + 1
    assert slow_tpm.latency.counts["Create"] == 1
    # 60 ms modelled per TPM2_Sign is a floor (a delay never ends early), whatever the machine's speed
    assert slow >= SIGNATURES * 0.060, slow
    assert slow_tpm.latency.delayed > 0


def test_direct_tcti_goes_through_the_forwarder_too(slow_tpm):
    slow_tpm.abrmd.stop()  # a direct swtpm TCTI needs the TPM to itself
    with tpmtls.Pool(slow_tpm.direct_tcti) as pool:
        tpmtls.connect(pool=pool).info()
    assert slow_tpm.latency is not None and slow_tpm.latency.counts["GetCapability"] >= 1
