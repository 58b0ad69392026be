"""Notice a renewed certificate: a long-running process (the two proxies) builds a new TLS context for
new connections once its certificate or key file changed on disk (docs/renewal.md).

A renewal replaces the files by rename, so their inode changes with their content; the files are
looked at no more than once a second, on the way to a new upstream connection.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Callable, Generic, TypeVar

T = TypeVar("T")
_EVERY = 1.0  # seconds between looks at the files


def _stamp(paths: tuple[str, ...]) -> tuple[tuple[int, int, int], ...]:
    out = []
    for path in paths:
        try:
            st = os.stat(path)
            out.append((st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((0, 0, 0))  # gone for a moment (being replaced): compared again later
    return tuple(out)


class Renewable(Generic[T]):
    """A value made from certificate files (an SSL context, a transport over one), made again when they change.

    `get()` returns the current value; `on_change(old)` is told after a new one was made.
    """

    def __init__(self, paths: tuple[str | os.PathLike[str], ...], make: Callable[[], T],
                 on_change: Callable[[T], None] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.paths = tuple(os.fspath(p) for p in paths)
        self._make = make
        self._on_change = on_change
        self._clock = clock
        self._lock = threading.Lock()
        self._stamp = _stamp(self.paths)
        self._value = make()
        self._looked = clock()

    def get(self) -> T:
        now = self._clock()
        if now - self._looked < _EVERY:
            return self._value
        with self._lock:
            self._looked = now
            stamp = _stamp(self.paths)
            if stamp == self._stamp or (0, 0, 0) in stamp:
                return self._value
            old, self._value, self._stamp = self._value, self._make(), stamp
        if self._on_change is not None:
            self._on_change(old)
        return self._value


__all__ = ["Renewable"]
