"""`TestTpm`: swtpm + tpm2-abrmd on this process' private bus, optionally at a hardware TPM's pace."""

from __future__ import annotations

import os
from typing import Callable

from .abrmd import Abrmd
from .dbus import DBusSession, shared_bus
from .latency import LatencyForwarder, TpmTiming
from .ports import HOST, free_port
from .process import Component, make_workdir, register, stop_each, tail, unregister
from .swtpm import SwTpm


class TestTpm(Component):
    """swtpm + tpm2-abrmd in a temp dir, on this process' private bus: what tests need.

    In-process clients use ``tcti`` (``start()`` makes sure the shared private bus
    runs and ``DBUS_SESSION_BUS_ADDRESS`` points at it); subprocesses need
    ``env={**os.environ, **t.env}``. Several may run at once in one process.
    """

    __test__ = False  # not a pytest test class despite its name

    def __init__(self, workdir: str | os.PathLike[str] | None = None, *, timing: TpmTiming | None = None) -> None:
        """Prepare (not start) the stack; *workdir* defaults to a new temp dir.

        *timing*: give the TPM a hardware TPM's pace (e.g. ``TpmTiming.with_sign(50)``):
        a forwarder between abrmd and swtpm holds each response for the command's
        modelled duration (see :mod:`tpmtls.lab.latency`); ``latency.counts`` then tells
        how many of each TPM command ran.
        """
        self.workdir, self._owns_workdir = make_workdir(workdir, "tpmtls-")
        self.swtpm = SwTpm(self.workdir / "swtpm")
        self.timing = timing
        self.latency: LatencyForwarder | None = None
        self.bus: DBusSession | None = None
        self._abrmd: Abrmd | None = None
        self._started = False

    # -- info -------------------------------------------------------------
    @property
    def abrmd(self) -> Abrmd:
        """The tpm2-abrmd component (exists once start() was called)."""
        if self._abrmd is None:
            raise RuntimeError("TestTpm has not been started yet")
        return self._abrmd

    @property
    def tcti(self) -> str:
        """TCTI for clients (through abrmd; many may be open at once)."""
        return self.abrmd.tcti

    @property
    def direct_tcti(self) -> str:
        """TCTI straight to swtpm (through the latency forwarder if any), bypassing abrmd."""
        if self.latency is not None:
            return f"swtpm:host={HOST},port={self.latency.port}"
        return self.swtpm.tcti

    @property
    def env(self) -> dict[str, str]:
        """Environment additions a subprocess needs to use this TPM."""
        if self.bus is None or self.bus.address is None:
            raise RuntimeError("TestTpm is not running")
        return {
            "DBUS_SESSION_BUS_ADDRESS": self.bus.address,
            "TPM2TOOLS_TCTI": self.tcti,
            "TPMTLS_TCTI": self.tcti,
            "TPM2OPENSSL_TCTI": self.tcti,
        }

    def logs(self) -> str:
        """Tail of each component's log, for failure messages."""
        parts = []
        for label, path in (
            ("swtpm", self.swtpm.log_path),
            ("dbus-daemon", self.bus.log_path if self.bus else None),
            ("tpm2-abrmd", self._abrmd.log_path if self._abrmd else None),
        ):
            if path is None:
                continue
            body = "\n".join(tail(path, 20)) or "<empty>"
            parts.append(f"== {label} ({path}) ==\n{body}")
        return "\n".join(parts)

    # -- lifecycle --------------------------------------------------------
    def start(self) -> "TestTpm":
        """Start swtpm and an abrmd for it on the shared private bus (cleaning up on failure)."""
        if self._started:
            return self
        try:
            self.swtpm.start()
            if self.timing is not None:
                assert self.swtpm.port is not None
                self.latency = LatencyForwarder(self.swtpm.port, free_port(2), self.timing).start()
            self.bus = shared_bus()
            self._abrmd = Abrmd(self.direct_tcti, self.bus, self.workdir / "abrmd")
            self._abrmd.start()
        except BaseException:
            self._stop_components()
            raise
        self._started = True
        register(self)
        return self

    def _stop_components(self) -> None:
        steps: list[Callable[[], None]] = []
        if self._abrmd is not None:
            steps.append(self._abrmd.stop)
        steps.append(lambda: self.swtpm.stop(clean=True))
        if self.latency is not None:
            steps.append(self.latency.stop)
        stop_each(steps)

    def stop(self) -> None:
        """Stop abrmd, then swtpm (clean TPM2_Shutdown). The shared bus stays. Idempotent."""
        try:
            self._stop_components()
        finally:
            self._started = False
            unregister(self)

    def __repr__(self) -> str:
        return f"<TestTpm workdir={self.workdir} swtpm={self.swtpm!r} abrmd={self._abrmd!r}>"
