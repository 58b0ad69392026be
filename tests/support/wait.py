"""Waiting for something to happen: a bounded poll on the condition, never a fixed sleep.

A test that sleeps "long enough" is slow when the machine is idle and flaky when it is
busy (two cores, up to eight sessions here). These poll the condition itself and fail
with a message that names what did not happen.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Callable, TypeVar

T = TypeVar("T")

#: How often a condition is checked (s): short against every wait the suite has (≥ 0.5 s).
INTERVAL = 0.05


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = INTERVAL) -> T:
    """Poll `predicate` until it returns something truthy, and return that; AssertionError naming
    `what` after `timeout` seconds. Bounded in time and in count."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 2):
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    value = predicate()
    if value:
        return value
    raise AssertionError(f"{what}: not within {timeout:g} s")


def reap_child(pid: int, timeout: float, what: str) -> int:
    """The exit code of forked child `pid`; if it has not exited within `timeout` s it is killed
    (SIGKILL, reaped) and the test fails naming `what`."""
    status: list[int] = []

    def exited() -> bool:
        done, code = os.waitpid(pid, os.WNOHANG)
        if done:
            status.append(code)
        return bool(done)

    try:
        wait_until(exited, timeout, what)
    except AssertionError:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    return os.waitstatus_to_exitcode(status[0])
