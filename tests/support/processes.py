"""Processes the suite starts itself (NGINX, openssl s_server, the tpmtls servers and proxies),
supervised the way the lab supervises its components (`tpmtls.lab.process`): each in its own
session, logging to a file, stopped by PID (SIGTERM, bounded wait, SIGKILL of what is left of
its session), and stopped at interpreter exit if a test did not get to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from support.wait import wait_until
from tpmtls.lab.process import Component, child_env, fail, has_exited, register, spawn, terminate, unregister

#: The lab's own lines in a log (`tpmtls.lab.process.log_marker`), not the process's.
LAB_MARKER = "--- tpmtls.lab "

_S = TypeVar("_S", bound="Supervised")


class Supervised(Component):
    """`argv` started by the constructor and ready once `ready()` says so (checked while it runs,
    within `start_timeout`); a process that exits first fails with the tail of its log.
    `with X(...) as x:` stops it on exit; `returncode` is its exit status once stopped."""

    #: what messages call it
    name = "process"
    #: ready once this is in its log (None: as soon as it runs, unless `ready()` says otherwise)
    ready_line: str | None = None
    start_timeout = 60.0
    stop_timeout = 20.0

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.argv, self.log_path, self.env = argv, log_path, env
        self.workdir, self._owns_workdir = log_path.parent, False
        self.returncode: int | None = None
        self._proc = None
        self.start()

    def ready(self) -> bool:
        """True once it serves: `ready_line` in its log, or what a subclass checks (a port that accepts)."""
        return self.ready_line is None or self.ready_line in self.text()

    def start(self: _S) -> _S:
        if self._proc is not None:
            return self
        self._proc = spawn(self.argv, self.log_path, child_env(self.env))
        register(self)
        try:
            wait_until(self._ready_or_exited, self.start_timeout, f"{self.name} ready")
        except AssertionError:
            self.stop()
            raise fail(f"{self.name} was not ready within {self.start_timeout:g} s", self.log_path) from None
        return self

    def _ready_or_exited(self) -> bool:
        if self.ready():
            return True
        assert self._proc is not None
        if has_exited(self._proc):
            self.stop()
            raise fail(f"{self.name} exited {self.returncode} at start", self.log_path)
        return False

    def stop(self) -> None:
        if self._proc is not None:
            terminate(self._proc, timeout=self.stop_timeout)
            self.returncode = self._proc.returncode
            self._proc = None
            unregister(self)

    def wait(self, timeout: float) -> int:
        """Its exit status once it ends by itself (AssertionError after `timeout` s)."""
        proc = self._proc
        if proc is None:
            assert self.returncode is not None
            return self.returncode
        wait_until(lambda: has_exited(proc), timeout, f"{self.name} (pid {proc.pid}) exiting by itself")
        self.stop()
        assert self.returncode is not None
        return self.returncode

    def wait_for(self, needle: str, timeout: float = 60) -> str:
        """Its log once `needle` is in it; fails after `timeout` s, or at once if it exited first."""

        def logged() -> str:
            text = self.text()
            if needle in text:
                return text
            if self._proc is None or has_exited(self._proc):
                raise fail(f"{self.name} exited before logging {needle!r}", self.log_path)
            return ""

        return wait_until(logged, timeout, f"{self.name} logging {needle!r}")

    def text(self) -> str:
        """What the process wrote (stdout and stderr), without the lab's own lines."""
        return "".join(line for line in self._log().splitlines(keepends=True) if not line.startswith(LAB_MARKER))

    def lines(self) -> list[str]:
        return self.text().splitlines()

    def _log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
