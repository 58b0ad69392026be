"""Push/pull progress: rich bars on a terminal, docker-like plain lines otherwise.

rich draws several live bars from many threads, sizes them to the terminal and
falls back cleanly; writing that by hand is not worth it.
"""

from __future__ import annotations

import threading
from typing import Any, TextIO


class Task:
    def __init__(self, owner: "Progress", name: str, total: int | None) -> None:
        self.owner, self.name = owner, name
        self._id = owner._bars.add_task(name, total=total) if owner._bars is not None else None

    def advance(self, n: int) -> None:
        """n bytes more are on the registry (negative: a resync, nothing to show)."""
        if self._id is not None and n > 0:
            self.owner._bars.advance(self._id, n)  # type: ignore[union-attr]

    def done(self, status: str) -> None:
        if self._id is not None:
            bars = self.owner._bars
            bars.update(self._id, description=f"{self.name}: {status}")  # type: ignore[union-attr]
            bars.stop_task(self._id)  # type: ignore[union-attr]
        else:
            self.owner.line(f"{self.name}: {status}")


class Progress:
    """`bars_to`: a terminal stream for live bars, or None for plain lines on `plain`."""

    def __init__(self, bars_to: TextIO | None, plain: TextIO | None = None) -> None:
        self._plain = plain
        self._lock = threading.Lock()
        self._bars: Any = None
        if bars_to is not None:
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, TextColumn, TransferSpeedColumn
            from rich.progress import Progress as Bars

            self._bars = Bars(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                              console=Console(file=bars_to), transient=False)
            self._bars.start()

    def task(self, name: str, total: int | None) -> Task:
        return Task(self, name, total)

    def line(self, text: str) -> None:
        if self._plain is None:
            return
        with self._lock:
            print(text, file=self._plain, flush=True)

    def close(self) -> None:
        if self._bars is not None:
            self._bars.stop()
            self._bars = None


def print_progress_default() -> Progress:
    """Bars on a terminal, plain lines otherwise (what tpmtls-push and tpmtls-pull show)."""
    import sys

    return Progress(sys.stderr if sys.stderr.isatty() else None, plain=sys.stdout)
