"""Concurrent handshakes share one TPM key through the pool; the TPM may go away and come back."""

from __future__ import annotations

import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import tpmtls
from support.peers import OpenSSLServer, Pki
from support.tls_clients import client_subject, pyopenssl_get, stdlib_get
from support.wait import wait_until
from tpmtls import provider
from tpmtls.tpm import default_pool


def test_32_threads_x_50_handshakes_one_key(tpm_client, pki, s_server, test_tpm):
    cert, key = tpm_client["ecc-p256"]
    ctx = tpmtls.ssl_context(cert, key, pki.ca_file, tcti=test_tpm.tcti, tls_version="1.3",
                                resume=False)  # every handshake signs: this is the signing path under load
    pool = default_pool(test_tpm.tcti)
    before = pool.stats()

    def worker(_: int) -> int:
        ok = 0
        for _ in range(50):
            assert client_subject(stdlib_get(ctx, s_server.port)) == "CN=tpm-client-ecc-p256"
            ok += 1
        return ok

    with ThreadPoolExecutor(32) as ex:
        assert sum(ex.map(worker, range(32))) == 32 * 50
    after = pool.stats()
    assert after.signatures - before.signatures == 32 * 50  # one TPM signature per handshake
    assert after.errors == before.errors
    assert after.key_loads - before.key_loads <= pool.size  # loaded once per context, never per handshake


def test_pyopenssl_threads(tpm_client, pki, s_server, test_tpm):
    cert, key = tpm_client["rsa2048"]
    ctx = tpmtls.pyopenssl_context(cert, key, pki.ca_file, hostname="localhost", tcti=test_tpm.tcti, resume=False)
    pool = default_pool(test_tpm.tcti)
    before = pool.stats().signatures

    def worker(_: int) -> None:
        for _ in range(20):
            assert client_subject(pyopenssl_get(ctx, s_server.port)) == "CN=tpm-client-rsa2048"

    with ThreadPoolExecutor(8) as ex:
        list(ex.map(worker, range(8)))
    assert pool.stats().signatures - before == 8 * 20


def test_tpm_goes_away_mid_run(fresh_tpm, tmp_path):
    """Kill and restart the resource manager under 4 busy threads: no process restart needed.

    An outage shorter than the pool's reconnect wait is absorbed (no handshake fails); one
    longer than that wait fails the handshakes meanwhile, each with a clear reason.
    """
    pki = Pki(tmp_path / "pki")
    key = tpmtls.connect(fresh_tpm.tcti).create_key("ecc-p256", tmp_path / "k.key")
    cert = pki.issue(key.public_key(), "survivor", "k.crt")
    ctx = tpmtls.ssl_context(cert, tmp_path / "k.key", pki.ca_file, tcti=fresh_tpm.tcti, resume=False)
    pool = default_pool(fresh_tpm.tcti)
    results: list[str] = []
    errors: list[str] = []
    stop = threading.Event()

    def worker() -> None:
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                page = stdlib_get(ctx, server.port)
                results.append("ok" if client_subject(page) == "CN=survivor" else "bad page")
            except (ssl.SSLError, OSError) as e:
                errors.append(provider.last_error() or f"no reason recorded: {e}")

    def handshakes_after(count: int, what: str) -> None:
        """Wait until the workers have done a handshake beyond the first `count`."""
        wait_until(lambda: len(results) > count, 60, what)

    def outage(seconds: float, reconnect_window: float) -> tuple[int, int]:
        pool.reconnect_timeout = reconnect_window
        handshakes_after(len(results), "a handshake before the outage")
        ok, failed = len(results), len(errors)
        fresh_tpm.abrmd.kill()
        time.sleep(seconds)  # the outage itself: its length against the reconnect wait is the point
        fresh_tpm.abrmd.restart()
        handshakes_after(len(results), "a handshake after the restart")
        return len(results) - ok, len(errors) - failed

    with OpenSSLServer(pki) as server:
        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        short_ok, short_failed = outage(0.3, reconnect_window=10.0)  # restart well inside the window
        long_ok, long_failed = outage(3.0, reconnect_window=0.5)  # down far longer than the window
        ok_before_end = len(results)
        handshakes_after(ok_before_end, "a handshake once the TPM is back")
        stop.set()
        for t in threads:
            t.join(30)
    print(f"short outage: ok={short_ok} failed={short_failed}; long: ok={long_ok} failed={long_failed}; "
          f"reasons={sorted(set(errors))}")
    assert "bad page" not in results
    assert short_failed == 0  # absorbed by the reconnect wait
    assert long_failed > 0  # 3 s > 0.5 s reconnect wait: handshakes meanwhile fail ...
    for reason in errors:  # ... each saying why, in one line
        assert fresh_tpm.tcti in reason and "\n" not in reason
    assert len(results) > ok_before_end  # and later handshakes succeed, same process and context
    assert pool.stats().rebuilds >= 2
