"""A /dev/tpmrm0 stand-in: swtpm behind a FUSE file that behaves like the kernel's TPM resource manager.

    with DeviceTpm(tmp_path / "dev") as t:
        tpm = tpmtls.connect(t.tcti)          # "device:/…/dev/tpmrm0", tpmtls's default TCTI kind

`TpmrmDevice` is the FUSE process (`tpmrm_fuse`, one space per open file, modelled on
drivers/char/tpm: `tpmrm_space`); `DeviceTpm` puts it in front of a swtpm, optionally
through the latency forwarder (`TpmTiming`) so every TPM command -- the resource
manager's ContextLoad/ContextSave/FlushContext included -- takes a hardware TPM's time
and is counted. Variants: `mode`/`owner` for the permission test, `direct=True` for a
/dev/tpm0 (one open file at a time, no resource manager), `object_slots` below three for
a TPM with more slots than the kernel's space (swtpm has three: with the kernel's
swapping, the TPM itself would refuse a fourth object before the space does). Needs /dev/fuse and libfuse3
(Debian `fuse3`); differences from the kernel: docs/tpm-device.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from .latency import LatencyForwarder, TpmTiming
from .ports import HOST, free_port
from .process import (
    POLL_INTERVAL,
    START_TIMEOUT,
    Component,
    child_env,
    fail,
    has_exited,
    log_marker,
    make_workdir,
    register,
    spawn,
    stop_each,
    tail,
    terminate,
    unregister,
)
from .swtpm import SwTpm


def fuse_available() -> str | None:
    """None when a FUSE file can be served here, else why not (for a test's skip reason)."""
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse (FUSE is not available in this kernel or container)"
    try:
        import mfusepy  # noqa: F401 - loads libfuse3
    except (ImportError, OSError) as e:
        return f"mfusepy/libfuse3 not usable ({e}); install the Debian package fuse3 and the test extra"
    return None


def _mounted(path: Path) -> bool:
    target = os.fsencode(os.path.realpath(path))
    try:
        with open("/proc/self/mounts", "rb") as f:
            return any(line.split()[1] == target for line in f if len(line.split()) > 1)
    except OSError:
        return False


class TpmrmDevice(Component):
    """The FUSE process serving `<workdir>/dev/<name>` for the TPM at 127.0.0.1:`tpm_port`."""

    def __init__(self, tpm_port: int, workdir: str | os.PathLike[str] | None = None, *, name: str = "tpmrm0",
                 direct: bool = False, mode: int = 0o666, owner: tuple[int, int] | None = None,
                 object_slots: int = 3) -> None:
        self.workdir, self._owns_workdir = make_workdir(workdir, "tpmtls-tpmrm-")
        self.object_slots = object_slots
        self.tpm_port = tpm_port
        self.name, self.direct, self.mode = name, direct, mode
        self.owner = owner or (os.getuid(), os.getgid())
        self.mountpoint = self.workdir / "dev"
        self.log_path = self.workdir / "tpmrm.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def path(self) -> Path:
        """The device file (what `device:PATH` names)."""
        return self.mountpoint / self.name

    def start(self) -> TpmrmDevice:
        if self.running:
            return self
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "tpmtls.lab.tpmrm_fuse", str(self.mountpoint), "--tpm", f"{HOST}:{self.tpm_port}",
                "--name", self.name, "--mode", f"{self.mode:o}", "--owner", "{}:{}".format(*self.owner),
                "--object-slots", str(self.object_slots)]
        if self.direct:
            argv.append("--direct")
        self._proc = spawn(argv, self.log_path, child_env())
        register(self)
        deadline = time.monotonic() + START_TIMEOUT
        for _ in range(int(START_TIMEOUT / POLL_INTERVAL) + 1):
            if has_exited(self._proc):
                self._proc.wait()
                self._proc = None
                unregister(self)
                raise fail("the /dev/tpmrm0 stand-in exited during startup", self.log_path)
            if _mounted(self.mountpoint) and self.path.exists():
                return self
            if time.monotonic() >= deadline:
                break
            time.sleep(POLL_INTERVAL)
        self.stop()
        raise fail(f"the /dev/tpmrm0 stand-in did not mount within {START_TIMEOUT:.0f}s", self.log_path)

    def stop(self) -> None:
        """SIGTERM (libfuse unmounts), bounded; a lazy unmount if the mount outlived the process."""
        proc, self._proc = self._proc, None
        if proc is not None:
            log_marker(self.log_path, f"stopping pid {proc.pid}")
            terminate(proc)
            unregister(self)
        if _mounted(self.mountpoint):
            subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True, timeout=30, check=False)

    def logs(self) -> str:
        return "\n".join(tail(self.log_path, 20))

    def __repr__(self) -> str:
        return f"<TpmrmDevice {self.path} pid={self.pid}>"


class DeviceTpm(Component):
    """swtpm (+ latency forwarder) + the /dev/tpmrm0 stand-in, in one temp dir: the device path for tests.

    Mirrors `TestTpm` where tests use it: `tcti`, `env`, `swtpm`, `latency`, `logs()`.
    """

    __test__ = False

    def __init__(self, workdir: str | os.PathLike[str] | None = None, *, timing: TpmTiming | None = None,
                 mode: int = 0o666, owner: tuple[int, int] | None = None, direct: bool = False,
                 object_slots: int = 3) -> None:
        self.workdir, self._owns_workdir = make_workdir(workdir, "tpmtls-device-")
        self.swtpm = SwTpm(self.workdir / "swtpm")
        self.timing = timing
        self.latency: LatencyForwarder | None = None
        self.device: TpmrmDevice | None = None
        self._options = {"mode": mode, "owner": owner, "direct": direct, "object_slots": object_slots}

    @property
    def tcti(self) -> str:
        if self.device is None:
            raise RuntimeError("DeviceTpm is not running")
        return f"device:{self.device.path}"

    @property
    def env(self) -> dict[str, str]:
        """Environment additions a subprocess needs to use this TPM."""
        return {"TPM2TOOLS_TCTI": self.tcti, "TPMTLS_TCTI": self.tcti, "TPM2OPENSSL_TCTI": self.tcti}

    def start(self) -> DeviceTpm:
        try:
            self.swtpm.start()
            assert self.swtpm.port is not None
            port = self.swtpm.port
            if self.timing is not None:
                self.latency = LatencyForwarder(port, free_port(2), self.timing).start()
                port = self.latency.port
            name = "tpm0" if self._options["direct"] else "tpmrm0"
            self.device = TpmrmDevice(port, self.workdir / "tpmrm", name=name, **self._options)  # type: ignore[arg-type]
            self.device.start()
        except BaseException:
            self._stop_components()
            raise
        register(self)
        return self

    def _stop_components(self) -> None:
        steps: list[Callable[[], None]] = []
        if self.device is not None:
            steps.append(self.device.stop)
        steps.append(lambda: self.swtpm.stop(clean=True))
        if self.latency is not None:
            steps.append(self.latency.stop)
        stop_each(steps)

    def stop(self) -> None:
        try:
            self._stop_components()
        finally:
            unregister(self)

    @property
    def pid(self) -> int | None:
        return self.device.pid if self.device is not None else None

    @property
    def running(self) -> bool:
        return self.device is not None and self.device.running

    def logs(self) -> str:
        parts = [f"== swtpm ==\n{chr(10).join(tail(self.swtpm.log_path, 20))}"]
        if self.device is not None:
            parts.append(f"== tpmrm stand-in ({self.device.log_path}) ==\n{self.device.logs()}")
        return "\n".join(parts)

    def __repr__(self) -> str:
        return f"<DeviceTpm {self.tcti if self.device else 'stopped'} swtpm={self.swtpm!r}>"
