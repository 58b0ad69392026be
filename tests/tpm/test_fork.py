"""fork(): parent and children sign at the same time, every signature verifies, nobody hangs.

Pools, Tpm objects and key objects made before the fork keep working in the child, on
TPM contexts of the child's own; the parent's contexts stay the parent's.
"""

from __future__ import annotations

import multiprocessing
import os
import threading

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

import tpmtls
from support.wait import reap_child, wait_until

ECDSA = ec.ECDSA(hashes.SHA256())
CHILDREN, PER_CHILD = 3, 60


class ParentSigner:
    """Signs in a background thread of the parent until stopped; every signature checked."""

    def __init__(self, key) -> None:
        self.key, self.ok, self.bad = key, 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        for i in range(100_000):  # bounded; stopped long before
            if self._stop.is_set():
                return
            data = f"parent {i}".encode()
            try:
                self.key.public_key().verify(self.key.sign(data, ECDSA), data, ECDSA)
                self.ok += 1
            except Exception as e:  # noqa: BLE001 - collected for the assertion
                self.bad.append(repr(e))

    def __enter__(self) -> "ParentSigner":
        self._thread.start()
        wait_until(lambda: self.ok >= 5, 30, "the parent's thread signing")  # so the fork lands mid-signing
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)
        assert not self._thread.is_alive()


def child_signs(key, n: int, label: str) -> list[tuple[bytes, bytes]]:
    out = []
    for i in range(n):
        data = f"{label} {i}".encode()
        out.append((data, key.sign(data, ECDSA)))
    return out


def _mp_child(key, label: str, queue) -> None:
    queue.put(child_signs(key, PER_CHILD, label))


def verify_all(key, signed: list[tuple[bytes, bytes]]) -> None:
    for data, sig in signed:
        key.public_key().verify(sig, data, ECDSA)  # raises if wrong


@pytest.fixture(params=["explicit pool", "default pool"])
def key(request, any_tpm, tmp_path):
    """On tpm2-abrmd and on /dev/tpmrm0, where a forked child shares the parent's open files."""
    if request.param == "explicit pool":
        pool = tpmtls.Pool(any_tpm.tcti, size=2)
        yield tpmtls.connect(pool=pool).create_key("ecc-p256", tmp_path / "k.key")
        pool.close()
    else:
        yield tpmtls.connect(any_tpm.tcti).create_key("ecc-p256", tmp_path / "k.key")


def test_multiprocessing_fork_children_and_parent_all_sign(key):
    key.sign(b"warm up: the parent's contexts are open before the fork", ECDSA)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    with ParentSigner(key) as parent:
        procs = [ctx.Process(target=_mp_child, args=(key, f"child {n}", queue)) for n in range(CHILDREN)]
        for p in procs:
            p.start()
        results = [queue.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
        parent_ok_while_children_ran = parent.ok
    assert parent.bad == []
    assert parent_ok_while_children_ran > 0
    for signed in results:
        assert len(signed) == PER_CHILD
        verify_all(key, signed)
    key.sign(b"the parent's pool is still fine afterwards", ECDSA)


def test_os_fork_child_signs_with_objects_made_before_the_fork(key):
    key.sign(b"warm up", ECDSA)
    with ParentSigner(key) as parent:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: sign, report through the pipe, never return into pytest
            status = 1
            try:
                os.close(read_end)
                signed = child_signs(key, PER_CHILD, "os.fork child")
                verify_all(key, signed)
                os.write(write_end, f"{len(signed)} {key.pool.stats().contexts_open}".encode())
                status = 0
            finally:
                os._exit(status)
        os.close(write_end)
        exit_code = reap_child(pid, 120, "the forked child signing")
        report = os.read(read_end, 100).decode()
        os.close(read_end)
    assert exit_code == 0
    signed, contexts = map(int, report.split())
    assert signed == PER_CHILD and contexts >= 1  # the child opened contexts of its own
    assert parent.bad == [] and parent.ok > 0
