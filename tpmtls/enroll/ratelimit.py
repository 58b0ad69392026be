"""Per-client token buckets: a client may burst, then gets `rate` per second; the rest waits (429 + Retry-After).

Kept in each server process's memory (a limit per process, not per cluster: with N instances
a client gets N times the rate at most — cheap, and no database write per request). The
table of clients is bounded: past `max_clients` the fullest buckets (clients that have
been quiet long enough to be back at their burst) are forgotten first, which loses nothing.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Callable

from .attest_errors import Refusal


@dataclass(frozen=True)
class Rate:
    """`burst` requests at once, refilled at `per_second`."""

    per_second: float
    burst: int


class Buckets:
    """One token bucket per key (a client address, an account)."""

    def __init__(self, rate: Rate, what: str, *, max_clients: int = 20000, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.what = what
        self.max_clients = max_clients
        self.clock = clock
        self._tokens: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()

    def wait_for(self, key: str) -> float:
        """Take a token for `key`: 0 if there was one, else the seconds until there is (nothing taken)."""
        now = self.clock()
        with self._lock:
            tokens, at = self._tokens.get(key, (float(self.rate.burst), now))
            tokens = min(float(self.rate.burst), tokens + (now - at) * self.rate.per_second)
            if tokens >= 1.0:
                self._tokens[key] = (tokens - 1.0, now)
                if len(self._tokens) > self.max_clients:
                    self._forget(now)
                return 0.0
            self._tokens[key] = (tokens, now)
            return (1.0 - tokens) / self.rate.per_second if self.rate.per_second > 0 else 3600.0

    def take(self, key: str) -> None:
        """Take a token or raise the 429 `rateLimited` problem with Retry-After (RFC 8555 6.6)."""
        wait = self.wait_for(key)
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            raise Refusal("rateLimited", f"too many {self.what} from {key}; retry in {seconds} s", 429,
                          headers={"Retry-After": str(seconds)})

    def _forget(self, now: float) -> None:
        full = sorted(self._tokens, key=lambda k: -(self._tokens[k][0] + (now - self._tokens[k][1]) * self.rate.per_second))
        for k in full[: len(self._tokens) - self.max_clients * 9 // 10]:
            del self._tokens[k]


__all__ = ["Buckets", "Rate"]
