"""The shim frees keys without calling Python: no deadlock under a held lock, no leak, no stale keys."""

from __future__ import annotations

import gc
import threading

import pytest

import tpmtls
from support.wait import reap_child
from tpmtls import provider


def _contexts_in_a_cycle(cert, key, tcti: str, count: int) -> None:
    holder: dict[str, object] = {"contexts": [tpmtls.ssl_context(cert, key, tcti=tcti) for _ in range(count)]}
    holder["self"] = holder  # only a garbage collection frees these


@pytest.mark.parametrize("lock", ["_keys_lock", "_system_lock"])
def test_garbage_collection_under_a_provider_lock_does_not_deadlock(lock, tpm_client, test_tpm):
    cert, key = tpm_client["ecc-p256"]
    _contexts_in_a_cycle(cert, key, test_tpm.tcti, 3)

    def collect_holding_the_lock() -> None:
        with getattr(provider, lock):
            gc.collect()

    worker = threading.Thread(target=collect_holding_the_lock, daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), f"gc.collect() under provider.{lock} hung"


def test_freed_keys_are_forgotten(tpm_client, test_tpm):
    cert, key = tpm_client["ecc-p256"]
    gc.collect()
    before = provider.live_keys()
    _contexts_in_a_cycle(cert, key, test_tpm.tcti, 20)
    assert provider.live_keys() >= before + 20
    gc.collect()
    tpmtls.ssl_context(cert, key, tcti=test_tpm.tcti)  # a new load drains the shim's queue of freed keys
    gc.collect()
    assert provider.live_keys() <= before + 1


def test_context_still_signs_after_other_keys_were_freed(tpm_client, test_tpm, pki):
    import socket

    from support.peers import PythonTlsServer, verifying_server_context

    cert, key = tpm_client["ecc-p256"]
    kept = tpmtls.ssl_context(cert, key, pki.ca_file, tcti=test_tpm.tcti)
    _contexts_in_a_cycle(cert, key, test_tpm.tcti, 5)
    gc.collect()
    with PythonTlsServer(verifying_server_context(pki)) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=20) as raw:
            with kept.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"GET / HTTP/1.0\r\n\r\n")
                assert tls.recv(1024).endswith(b"hello tpm-client-ecc-p256\n")


@pytest.mark.parametrize("lock", ["_keys_lock", "_system_lock"])
def test_fork_while_another_thread_holds_a_provider_lock(lock, tpm_client, test_tpm):
    """The child gets fresh locks: it loads a TPM key although the parent's thread held one at fork()."""
    import os

    cert, key = tpm_client["ecc-p256"]
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with getattr(provider, lock):
            held.set()
            release.wait(60)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert held.wait(10)
    pid = os.fork()
    if pid == 0:  # child: load a key through the shim, then leave without running the parent's clean-up
        try:
            tpmtls.ssl_context(cert, key, tcti=test_tpm.tcti)
            os._exit(0)
        except BaseException:  # noqa: BLE001 - the child reports by exit status
            os._exit(1)
    release.set()
    holder.join(10)
    assert reap_child(pid, 60, f"the forked child loading a key (provider.{lock} held at fork)") == 0
