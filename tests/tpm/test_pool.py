"""The pool under threads: every signature verifies, counters add up, waits are bounded."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

import tpmtls

THREADS, PER_THREAD = 16, 100


def test_16_threads_x_100_signatures(any_tpm):
    """Through tpm2-abrmd and through /dev/tpmrm0 (four open files, each its own space)."""
    pool = tpmtls.Pool(any_tpm.tcti, size=4)
    try:
        key = tpmtls.connect(pool=pool).create_key("ecc-p256")
        created = pool.stats()
        pub = key.public_key()

        def worker(n: int) -> int:
            ok = 0
            for i in range(PER_THREAD):
                data = f"thread {n} message {i}".encode()
                sig = key.sign(data, ec.ECDSA(hashes.SHA256()))
                pub.verify(sig, data, ec.ECDSA(hashes.SHA256()))  # raises if wrong
                ok += 1
            return ok

        with ThreadPoolExecutor(THREADS) as ex:
            assert sum(ex.map(worker, range(THREADS))) == THREADS * PER_THREAD

        stats = pool.stats()
        assert stats.signatures == THREADS * PER_THREAD
        assert stats.operations - created.operations == THREADS * PER_THREAD
        assert stats.errors == 0 and stats.rebuilds == 0
        # each context loads the key once and keeps it: no per-signature load
        assert stats.key_loads <= stats.size
        assert stats.primaries <= stats.size
        assert stats.contexts_open == stats.size  # 16 threads kept all 4 contexts busy
        assert stats.sign_seconds > 0
    finally:
        pool.close()


def test_busy_pool_raises_tpmbusy_after_its_wait(test_tpm):
    pool = tpmtls.Pool(test_tpm.tcti, size=1, wait_timeout=0.2)
    inside, release = threading.Event(), threading.Event()

    def hold(ctx):
        inside.set()
        release.wait(10)

    holder = threading.Thread(target=pool.run, args=("hold", hold))
    holder.start()
    try:
        assert inside.wait(10)
        with pytest.raises(tpmtls.TpmBusy, match="stayed busy for 0.2 s"):
            pool.run("wait", lambda ctx: None)
        assert pool.stats().waits == 1
    finally:
        release.set()
        holder.join(10)
        pool.close()


def test_direct_tcti_allows_one_context(test_tpm):
    with pytest.raises(tpmtls.TpmtlsError, match="pool size must be 1"):
        tpmtls.Pool(test_tpm.direct_tcti, size=2)
    assert tpmtls.Pool(test_tpm.direct_tcti).size == 1


def test_closed_pool_refuses(test_tpm):
    pool = tpmtls.Pool(test_tpm.tcti, size=1)
    pool.close()
    with pytest.raises(tpmtls.TpmtlsError, match="closed"):
        pool.run("after close", lambda ctx: None)


def test_ephemeral_pool_opens_and_closes_per_operation(test_tpm):
    """The naive signer (the benchmarks' open-per-sign baseline): connect, SRK, load, sign, close."""
    from tpmtls.lab.open_per_sign import OpenPerSignPool

    pool = OpenPerSignPool(test_tpm.tcti, size=1)
    try:
        key = tpmtls.connect(pool=pool).create_key("ecc-p256")
        before = pool.stats()
        for _ in range(3):
            sig = key.sign(b"m", ec.ECDSA(hashes.SHA256()))
            key.public_key().verify(sig, b"m", ec.ECDSA(hashes.SHA256()))
        after = pool.stats()
        assert after.signatures - before.signatures == 3
        assert after.key_loads - before.key_loads == 3 and after.primaries - before.primaries == 3
        assert after.contexts_open == 0
    finally:
        pool.close()
