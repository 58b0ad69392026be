"""The process lifecycle of tpmtls in one place: what runs in a forked child, and at exit, in which order.

Each module that holds process state registers its step here under a name from the
orders below; this module registers one fork hook and one exit hook with the
interpreter, and runs the steps in the order written here, whatever the import order.

In a forked child (`os.register_at_fork(after_in_child=…)`), in this order:
1. ``tss-log lock``, ``provider locks``, ``injection lock`` -- locks another thread may
   have held at fork() would never be released in the child: make new ones first, so
   the steps after them (and the child's first TPM use) cannot block on them.
2. ``pools`` -- every pool forgets the parent's TPM contexts (they share the parent's
   connections) and opens its own on first use; the parent's are never used nor closed.

At interpreter exit (one `atexit` hook, registered when `import tpmtls` loads the
provider, so every atexit hook registered after it -- a user's TLS clean-up that may
still sign -- runs before it):
1. ``shim`` -- the OpenSSL shim stops calling into Python. OpenSSL frees keys during the
   final garbage collection; from here on a free or a late sign never enters Python.
2. ``pools`` -- the default pools close their contexts (flushing their objects on a
   direct TPM). Nothing can reach a pool through the shim any more.
"""

from __future__ import annotations

import atexit
import os
from typing import Callable

FORK_ORDER = ("tss-log lock", "provider locks", "injection lock", "pools")
EXIT_ORDER = ("shim", "pools")

_in_child: dict[str, Callable[[], None]] = {}
_at_exit: dict[str, Callable[[], None]] = {}


def _register(table: dict[str, Callable[[], None]], order: tuple[str, ...], step: str, fn: Callable[[], None]) -> None:
    if step not in order:
        raise ValueError(f"unknown lifecycle step {step!r}: add it to the order in tpmtls/_lifecycle.py")
    if step in table:
        raise ValueError(f"lifecycle step {step!r} is registered twice")
    table[step] = fn


def in_forked_child(step: str, fn: Callable[[], None]) -> None:
    """Run `fn` in every forked child, at `step`'s place in FORK_ORDER."""
    _register(_in_child, FORK_ORDER, step, fn)


def at_exit(step: str, fn: Callable[[], None]) -> None:
    """Run `fn` at interpreter exit, at `step`'s place in EXIT_ORDER."""
    _register(_at_exit, EXIT_ORDER, step, fn)


def _run(table: dict[str, Callable[[], None]], order: tuple[str, ...]) -> None:
    """Every registered step in order; one that fails does not stop the others (its error is raised last)."""
    failure: BaseException | None = None
    for step in order:
        fn = table.get(step)
        if fn is None:
            continue
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - the remaining steps must run; re-raised below
            failure = failure or e
    if failure is not None:
        raise failure


def _after_fork_in_child() -> None:
    _run(_in_child, FORK_ORDER)


def _at_interpreter_exit() -> None:
    _run(_at_exit, EXIT_ORDER)


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_at_interpreter_exit)
