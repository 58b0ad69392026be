"""The session pool: open TPM contexts with keys kept loaded, shared by every thread.

Opening a context, creating the SRK and loading a key cost tens of milliseconds on
swtpm and seconds on hardware (docs/facts-tpm.md, "What TPM operations cost"); a signature
costs one TPM2_Sign. So contexts stay open with their keys loaded (`context.py`: within
three objects, docs/tpm-device.md), and callers borrow a context for one operation. A
context that loses its transport, or finds the TPM reset under it, is rebuilt and the
operation retried once (docs/architecture.md, "The pool").
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections import deque
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Callable, Iterator, TypeVar

from tpm2_pytss import ESAPI, TSS2_Exception
from tpm2_pytss.types import TPM2B_DATA, TPM2B_DIGEST, TPM2B_PUBLIC_KEY_RSA, TPMT_SIG_SCHEME, TPMT_SIGNATURE

from .._lifecycle import at_exit, in_forked_child
from ..errors import TpmBusy, TpmtlsError, TpmUnavailable, UsageError
from . import rc, transport
from ._tsslog import quiet_tss_logs, while_loading
from .context import MAX_OBJECTS, SWAPPED_OBJECTS, TpmContext, flush_orphans
from .keyfile import KeyBlob
from .pss import PssQuirk
from .rc_errors import to_error
from .tcti import default_pool_size, is_direct, resolve_tcti, swaps_every_object

T = TypeVar("T")

_RETRY_ATTEMPTS = 6  # RETRY/YIELDED/TESTING: 5 ms … 80 ms, 155 ms in all
DEFAULT_TIMEOUT = 60.0
"""Seconds one TPM command (or one connect) may take before the pool gives up on it.

Hardware TPMs take seconds for RSA key generation, and tens of seconds at worst; a
TPM that has not answered in a minute is stuck (or stopped). Override per pool with
`Pool(timeout=…)` or process-wide with $TPMTLS_TPM_TIMEOUT (seconds).
"""


@dataclass(frozen=True)
class PoolStats:
    """A snapshot of the pool's counters (for benchmarks and `tpmtls doctor`)."""

    tcti: str
    size: int
    contexts_open: int
    operations: int
    signatures: int
    decryptions: int
    key_loads: int
    primaries: int
    errors: int
    rebuilds: int
    retries: int
    waits: int
    wait_seconds: float
    max_wait_seconds: float
    sign_seconds: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class _Waiter:
    """A thread waiting for a context: the pool hands one over and sets `ready`."""

    __slots__ = ("ctx", "ready")

    def __init__(self) -> None:
        self.ctx: TpmContext | None = None
        self.ready = threading.Event()


class Pool:
    """`size` TPM contexts shared by all threads; `run()` borrows one for an operation.

    Thread-safe. Borrowing waits at most `wait_timeout` seconds, then raises TpmBusy.
    Each TPM command and each connect may take at most `timeout` seconds (default
    $TPMTLS_TPM_TIMEOUT, else DEFAULT_TIMEOUT), then fails with TpmUnavailable naming
    the TCTI. Contexts are opened lazily and reused most-recently-used first, so a
    light load keeps one warm context. Fork-safe: in a child the pool opens contexts
    of its own and leaves the parent's alone.
    """

    def __init__(
        self,
        tcti: str | None = None,
        size: int | None = None,
        *,
        wait_timeout: float = 30.0,
        reconnect_timeout: float = 5.0,
        timeout: float | None = None,
    ) -> None:
        self.tcti = resolve_tcti(tcti)
        if size is not None and size < 1:
            raise UsageError(f"pool size must be at least 1, not {size}")
        if size is not None and size > 1 and is_direct(self.tcti):
            raise UsageError(
                f"TCTI {self.tcti!r} reaches the TPM without a resource manager: it takes one "
                "connection, so the pool size must be 1 (put tpm2-abrmd or /dev/tpmrm0 in between)"
            )
        self.size = size or default_pool_size(self.tcti)
        self.wait_timeout = wait_timeout
        self.reconnect_timeout = reconnect_timeout
        self.timeout = _command_timeout(timeout)
        # devices, tabrmd and swtpm: our own transports bound each command; other TCTIs
        # (mssim …) cannot, so their operations run in a worker thread with a bounded join.
        self._own_transport = transport.handles(self.tcti)
        self.pss = PssQuirk()  # how this TPM salts RSA-PSS, learnt from the first PSS signature
        self._srk_kind: dict[str, str] = {}
        self._closed = False
        self._forked_child = False
        self._fresh_state()
        _live_pools.add(self)

    def _fresh_state(self) -> None:
        """Locks, contexts and counters of this process (again, in a forked child)."""
        self._pid = os.getpid()
        self._cond = threading.Condition()
        self._idle: list[TpmContext] = []
        self._contexts: list[TpmContext] = []
        self._waiters: deque[_Waiter] = deque()
        self._stats_lock = threading.Lock()
        self._counters = dict.fromkeys(
            ("operations", "signatures", "decryptions", "key_loads", "primaries", "errors", "rebuilds", "retries", "waits"),
            0,
        )
        self._times = {"wait_seconds": 0.0, "max_wait_seconds": 0.0, "sign_seconds": 0.0}

    def _after_fork(self) -> None:
        """In a forked child: keep the parent's contexts referenced but never use or close them.

        They share the parent's sockets (the parent's commands and ours would interleave
        and each side would read the other's responses) and, for tpm2-tss's TCTIs, state
        of libraries that do not survive fork; finalising them could write on the
        parent's connection. So the child starts with no context and opens its own.
        """
        _inherited.extend(self._contexts)
        self._forked_child = True
        self._fresh_state()

    def _check_process(self) -> None:
        # os.register_at_fork covers os.fork() and multiprocessing; this catches a fork
        # done in C (which runs no Python hooks).
        if self._pid != os.getpid():
            self._after_fork()

    # -- public -------------------------------------------------------------------

    def run(self, op: str, fn: Callable[[TpmContext], T], blob: KeyBlob | None = None) -> T:
        """Run `fn(context)` on a borrowed context; `op` names the operation in errors.

        TPM RETRY/YIELDED/TESTING warnings are retried with a short backoff. A lost
        transport or reset TPM rebuilds the context and runs `fn` once more. A command
        that misses its deadline is not retried: the TPM is stuck, and a retry would
        only double the wait.
        """
        self._check_process()
        with self._borrow() as ctx:
            self.count(operations=1)
            for attempt in (0, 1):
                try:
                    return self._bounded(fn, ctx, op)
                except TSS2_Exception as e:
                    if ctx.timed_out is not None:
                        self.count(errors=1)
                        ctx.close()
                        raise self._timeout_error(op) from None
                    if attempt == 0 and rc.is_context_lost(e):
                        self.count(rebuilds=1)
                        ctx.close()
                        ctx.after_loss = True
                        continue
                    self.count(errors=1)
                    problem = ctx.problem
                    if rc.is_context_lost(e):
                        ctx.close()
                    raise to_error(e, op, blob, self.tcti, problem) from None
                except TpmtlsError:
                    self.count(errors=1)
                    raise
                finally:
                    if attempt == 1:
                        ctx.after_loss = False
            raise AssertionError("unreachable")  # pragma: no cover

    def sign(self, blob: KeyBlob, digest: bytes, scheme: TPMT_SIG_SCHEME, auth: bytes | None = None) -> TPMT_SIGNATURE:
        """One TPM2_Sign of a digest computed in software (NULL ticket: unrestricted key)."""

        def fn(ctx: TpmContext) -> TPMT_SIGNATURE:
            handle = ctx.key(blob, auth)
            t0 = time.perf_counter()
            signature = ctx.esapi.sign(handle, TPM2B_DIGEST(digest), scheme)
            self.count(signatures=1, sign_seconds=time.perf_counter() - t0)
            return signature

        return self.run("sign", fn, blob)

    def rsa_decrypt(self, blob: KeyBlob, data: bytes, scheme: object, auth: bytes | None = None) -> bytes:
        """TPM2_RSA_Decrypt; with scheme NULL this is the raw RSA private operation."""

        def fn(ctx: TpmContext) -> bytes:
            handle = ctx.key(blob, auth)
            out = ctx.esapi.rsa_decrypt(handle, TPM2B_PUBLIC_KEY_RSA(data), scheme, TPM2B_DATA())
            self.count(decryptions=1)
            return bytes(out)

        return self.run("decrypt", fn, blob)

    def stats(self) -> PoolStats:
        self._check_process()
        with self._stats_lock:
            counters, times = dict(self._counters), dict(self._times)
        with self._cond:
            open_contexts = sum(1 for c in self._contexts if c.is_open)
        return PoolStats(tcti=self.tcti, size=self.size, contexts_open=open_contexts, **counters, **times)  # type: ignore[arg-type]

    def close(self) -> None:
        """Close every context; later calls raise. Contexts in use close when returned."""
        self._check_process()
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            waiters, self._waiters = list(self._waiters), deque()
        for waiter in waiters:
            waiter.ready.set()  # they find no context and the pool closed
        for ctx in idle:
            ctx.close(flush=is_direct(self.tcti))

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------

    @contextmanager
    def _borrow(self) -> Iterator[TpmContext]:
        """Lend a context, first come first served.

        A returned context goes straight to the longest-waiting thread (a hand-off, not a
        free-for-all): on a slow TPM a thread that just signed would otherwise take the
        context again before a woken waiter runs, and some threads would starve (measured:
        1 against 15 signatures per thread at 50 ms a signature).
        """
        start = time.monotonic()
        waiter: _Waiter | None = None
        with self._cond:
            if self._closed:
                raise TpmtlsError(f"the TPM pool for {self.tcti!r} is closed")
            if self._idle and not self._waiters:
                ctx = self._idle.pop()
            elif len(self._contexts) < self.size and not self._waiters:
                ctx = self._new_context()
            else:
                waiter = _Waiter()
                self._waiters.append(waiter)
        if waiter is not None:
            waiter.ready.wait(self.wait_timeout)
            with self._cond:
                if waiter.ctx is None:
                    if waiter in self._waiters:
                        self._waiters.remove(waiter)
                    self._count_wait(time.monotonic() - start)
                    if self._closed:
                        raise TpmtlsError(f"the TPM pool for {self.tcti!r} is closed")
                    raise TpmBusy(
                        f"all {self.size} TPM contexts for {self.tcti!r} stayed busy for "
                        f"{self.wait_timeout:g} s; the TPM is overloaded or an operation hangs"
                    )
            ctx = waiter.ctx
            self._count_wait(time.monotonic() - start)
        try:
            yield ctx
        finally:
            if ctx.abandoned:
                # A thread is still stuck in a command on it: keep it referenced, never
                # reuse it, and let a new context take its place.
                with self._cond:
                    self._contexts.remove(ctx)
                    _inherited.append(ctx)
                    if self._waiters and not self._closed:
                        self._hand_over(self._new_context())
            else:
                self._returning(ctx)
                with self._cond:
                    if self._closed:
                        ctx.close()
                    elif self._waiters:
                        self._hand_over(ctx)
                    else:
                        self._idle.append(ctx)

    def _returning(self, ctx: TpmContext) -> None:
        """Called with each context an operation is done with, before it is lent again."""

    def _new_context(self) -> TpmContext:
        ctx = TpmContext(self, len(self._contexts), SWAPPED_OBJECTS if swaps_every_object(self.tcti) else MAX_OBJECTS)
        self._contexts.append(ctx)
        return ctx

    def _hand_over(self, ctx: TpmContext) -> None:
        """Give `ctx` to the longest-waiting borrower (caller holds the condition's lock)."""
        waiter = self._waiters.popleft()
        waiter.ctx = ctx
        waiter.ready.set()

    def _with_backoff(self, fn: Callable[[TpmContext], T], ctx: TpmContext) -> T:
        for attempt in range(_RETRY_ATTEMPTS):
            try:
                return fn(ctx)
            except TSS2_Exception as e:
                if attempt == _RETRY_ATTEMPTS - 1:
                    raise
                if rc.is_object_memory(e) and ctx.evict_key():
                    continue
                if not rc.is_retry(e):
                    raise
                self.count(retries=1)
                time.sleep(0.005 * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def _bounded(self, fn: Callable[[TpmContext], T], ctx: TpmContext, op: str) -> T:
        """`fn` with every TPM command bounded by `timeout`; then the SRK leaves its slot.

        Our own transports (devices, tpm2-abrmd, swtpm) bound each command themselves.
        A TCTI only tpm2-tss speaks (mssim, a module named by file …) cannot be bounded
        per command: the operation runs in a worker thread joined for `timeout`, and one
        that does not come back leaves its context abandoned.
        """

        def operation(ctx: TpmContext) -> T:
            result = fn(ctx)
            ctx.release_srks()
            return result

        if self._own_transport:
            return self._with_backoff(operation, ctx)
        results: list[T] = []
        failures: list[BaseException] = []

        def work() -> None:
            try:
                results.append(self._with_backoff(operation, ctx))
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                failures.append(e)

        worker = threading.Thread(target=work, name=f"tpmtls-{op}", daemon=True)
        worker.start()
        worker.join(self.timeout)
        if results:
            return results[0]
        if failures:
            raise failures[0]
        ctx.abandoned = True
        raise self._timeout_error(op)

    def _timeout_error(self, op: str) -> TpmUnavailable:
        return TpmUnavailable(
            f"{op}: the TPM at TCTI {self.tcti!r} did not answer within {self.timeout:g} s; "
            "is it stopped or hung? (the bound is timeout= or $TPMTLS_TPM_TIMEOUT)"
        )

    def open_esapi(self, after_loss: bool = False) -> tuple[ESAPI, transport.StreamTcti | None]:
        """Connect to the TPM; after a loss, keep trying for `reconnect_timeout` seconds."""
        deadline = time.monotonic() + (self.reconnect_timeout if after_loss else 0)
        delay = 0.05
        while True:
            tcti: transport.StreamTcti | None = None
            try:
                quiet_tss_logs()
                if self._own_transport:
                    tcti = transport.open_transport(self.tcti, self.timeout)
                    esapi = ESAPI(tcti)
                else:
                    with while_loading(self.tcti):
                        esapi = ESAPI(self.tcti)
                if is_direct(self.tcti) and not self._forked_child:
                    # (in a forked child the objects present may be the parent's)
                    flush_orphans(esapi)
                return esapi, tcti
            except transport.TransportTimeout:
                if tcti is not None:
                    tcti.close()
                raise self._timeout_error("connect") from None
            except TSS2_Exception as e:
                if tcti is not None:
                    tcti.close()
                    if tcti.timed_out is not None:  # a command of the connect (orphan flush)
                        raise self._timeout_error("connect") from None
                if time.monotonic() + delay > deadline:
                    cause = e if isinstance(e, transport.TransportUnavailable) else tcti.unavailable if tcti else None
                    why = f"{cause.reason} (rc 0x{int(e.rc):x})" if cause is not None else rc.describe(e)
                    raise TpmUnavailable(
                        f"cannot reach the TPM at TCTI {self.tcti!r}: {why}; is the TPM or "
                        "resource manager running? set the TCTI to use (tcti=, --tcti or $TPMTLS_TCTI)"
                    ) from None
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def srk_order(self, key_id: str) -> tuple[str, ...]:
        known = self._srk_kind.get(key_id)
        if known == "rsa":
            return ("rsa", "ecc")
        return ("ecc", "rsa")

    def remember_srk(self, key_id: str, kind: str) -> None:
        self._srk_kind[key_id] = kind

    def _count_wait(self, seconds: float) -> None:
        with self._stats_lock:
            self._counters["waits"] += 1
            self._times["wait_seconds"] += seconds
            self._times["max_wait_seconds"] = max(self._times["max_wait_seconds"], seconds)

    def count(self, **amounts: float) -> None:
        with self._stats_lock:
            for name, amount in amounts.items():
                if name in self._counters:
                    self._counters[name] += int(amount)
                else:
                    self._times[name] += amount


def _command_timeout(timeout: float | None) -> float:
    if timeout is None:
        raw = os.environ.get("TPMTLS_TPM_TIMEOUT", "")
        if not raw:
            return DEFAULT_TIMEOUT
        try:
            timeout = float(raw)
        except ValueError:
            raise UsageError(f"$TPMTLS_TPM_TIMEOUT={raw!r} is not a number of seconds") from None
    if not timeout > 0:
        raise UsageError(f"the TPM command timeout must be a positive number of seconds, not {timeout}")
    return float(timeout)


_default_pools: dict[str, Pool] = {}
_default_lock = threading.Lock()
_live_pools: weakref.WeakSet[Pool] = weakref.WeakSet()
# Contexts this process must never use nor finalise: inherited from the parent at fork,
# or abandoned with a thread stuck in them. Referenced for the life of the process.
_inherited: list[TpmContext] = []


def default_pool(tcti: str | None = None) -> Pool:
    """The process-wide pool for a TCTI, created on first use."""
    resolved = resolve_tcti(tcti)
    with _default_lock:
        pool = _default_pools.get(resolved)
        if pool is None:
            pool = _default_pools[resolved] = Pool(resolved)
        return pool


def _after_fork_in_child() -> None:
    # Every pool of the parent (default or explicit, and so every Tpm and key object
    # holding one) keeps working in the child, on contexts of its own. Locks held by
    # other threads at fork time would never be released here: make new ones.
    global _default_lock
    _default_lock = threading.Lock()
    for pool in list(_live_pools):
        pool._after_fork()


def _close_default_pools() -> None:
    for pool in list(_default_pools.values()):
        pool.close()


in_forked_child("pools", _after_fork_in_child)
at_exit("pools", _close_default_pools)
