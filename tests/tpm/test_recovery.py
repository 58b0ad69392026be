"""The pool recovers by itself when the resource manager or the TPM restarts."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding

import tpmtls
from support.commands import require
from tpmtls.testing import SwTpm


def sign_and_verify(key) -> None:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        sig = key.sign(b"m", ec.ECDSA(hashes.SHA256()))
        key.public_key().verify(sig, b"m", ec.ECDSA(hashes.SHA256()))
    else:
        sig = key.sign(b"m", padding.PKCS1v15(), hashes.SHA256())
        key.public_key().verify(sig, b"m", padding.PKCS1v15(), hashes.SHA256())


@pytest.mark.parametrize("alg", ["ecc-p256", "rsa2048"])
def test_abrmd_killed_and_restarted_between_signatures(alg, fresh_tpm, tmp_path):
    pool = tpmtls.Pool(fresh_tpm.tcti, size=2)
    try:
        key = tpmtls.connect(pool=pool).create_key(alg, tmp_path / "k.key")
        sign_and_verify(key)
        fresh_tpm.abrmd.kill()
        fresh_tpm.abrmd.restart()
        sign_and_verify(key)  # same process, same key object
        stats = pool.stats()
        assert stats.rebuilds >= 1 and stats.errors == 0
    finally:
        pool.close()


def crash(t) -> None:
    """The TPM dies (no TPM2_Shutdown), and its resource manager with it where there is one."""
    if hasattr(t, "abrmd"):
        t.abrmd.kill()
    t.swtpm.kill()


def come_back(t) -> None:
    t.swtpm.restart()
    if hasattr(t, "abrmd"):
        t.abrmd.restart()


def test_tpm_killed_and_restarted(any_fresh_tpm, tmp_path):
    """A TPM crash under tpm2-abrmd or /dev/tpmrm0: it comes back; the key reloads from its file."""
    pool = tpmtls.Pool(any_fresh_tpm.tcti, size=2)
    try:
        key = tpmtls.connect(pool=pool).create_key("ecc-p256", tmp_path / "k.key")
        sign_and_verify(key)
        crash(any_fresh_tpm)
        come_back(any_fresh_tpm)
        sign_and_verify(key)
        assert pool.stats().rebuilds >= 1 and pool.stats().errors == 0
    finally:
        pool.close()


def test_direct_swtpm_restart(tmp_path):
    require("swtpm")
    with SwTpm(tmp_path / "sw") as sw:
        pool = tpmtls.Pool(sw.tcti)
        try:
            key = tpmtls.connect(pool=pool).create_key("ecc-p256")
            sign_and_verify(key)
            sw.kill()
            sw.restart()
            sign_and_verify(key)
            stats = pool.stats()
            assert stats.rebuilds == 1 and stats.errors == 0
        finally:
            pool.close()


def test_tpm_gone_fails_clearly_then_recovers(any_fresh_tpm):
    """tpm2-abrmd gone, or the TPM behind /dev/tpmrm0: one clear line, and signing resumes once it is back."""
    t = any_fresh_tpm
    pool = tpmtls.Pool(t.tcti, size=1, reconnect_timeout=0.5)
    try:
        key = tpmtls.connect(pool=pool).create_key("ecc-p256", t.workdir / "k.key")
        sign_and_verify(key)
        t.abrmd.kill() if hasattr(t, "abrmd") else t.swtpm.kill()
        with pytest.raises(tpmtls.TpmUnavailable) as err:
            key.sign(b"m", ec.ECDSA(hashes.SHA256()))
        assert t.tcti in str(err.value) and "\n" not in str(err.value)
        t.abrmd.restart() if hasattr(t, "abrmd") else t.swtpm.restart()
        sign_and_verify(key)
    finally:
        pool.close()
