"""The lab: real components started on loopback for tests, benchmarks and the quickstart.

Not part of the product: nothing in tpmtls imports it except the quickstart (which runs
the main job on a software TPM and a local registry). Users get the software-TPM stack
through `tpmtls.testing`; the registry, dockerd and image builders here are the suite's
and the benchmarks' infrastructure.

One module per component, each started in its own session, logged to a file in a work
directory, stopped by PID (`process`):

* `swtpm.SwTpm` -- ``swtpm socket --tpm2`` on two consecutive free loopback ports
  (data + control). It serves one socket connection at a time and has no resource
  manager (three transient object slots).
* `dbus.DBusSession` -- a private ``dbus-daemon --session``; `dbus.shared_bus` is the
  one every abrmd of this process sits on.
* `abrmd.Abrmd` -- ``tpm2-abrmd`` on that bus, multiplexing many clients onto one
  swtpm connection (TCTI ``tabrmd:bus_name=...,bus_type=session``).
* `stack.TestTpm` -- the three together in one temporary directory; with a
  `latency.TpmTiming` a forwarder gives swtpm a hardware TPM's pace.
* `tpmrm.DeviceTpm` -- swtpm behind a FUSE file that behaves like the kernel's
  /dev/tpmrm0 (`tpmrm_fuse`, with the kernel's resource manager modelled in
  `tpmrm_space`): tpmtls's default TCTI kind, for tests and benchmarks. Needs /dev/fuse,
  Debian's fuse3 and mfusepy (the test extra); see docs/tpm-device.md.
* `open_per_sign.OpenPerSignPool` -- the naive signer, the benchmarks' baseline.
* `registry.Registry`, `dockerd.Dockerd`, `containerd.Containerd` (ctr and the CRI plugin),
  `containers.ContainersTools` (podman, buildah, skopeo on private storage), `images.build_docker_archive`,
  `ekca.EkCa` (a stand-in TPM maker's EK CA).

The harness's own TPM commands (readiness probe, dictionary-attack set-up,
TPM2_Shutdown) are raw TPM 2.0 bytes over a socket with timeouts (`tpm_wire`), so a
wedged swtpm never hangs the caller. The abrmd readiness probe runs in a child Python
with ``DBUS_SESSION_BUS_ADDRESS`` in *its* environment only: the tabrmd TCTI reads the
variable from the calling process and GLib caches the session-bus connection
process-wide, so probing in-process would pin a bus connection in the caller.
`dbus.shared_bus` (not `Abrmd`) sets ``os.environ["DBUS_SESSION_BUS_ADDRESS"]`` for
in-process clients, once per process, and restores it at exit.
"""

from .abrmd import Abrmd
from .dbus import DBusSession, shared_bus
from .dockerd import Dockerd
from .images import build_docker_archive
from .latency import LatencyForwarder, TpmTiming
from .ports import free_port
from .registry import Registry
from .stack import TestTpm
from .swtpm import SwTpm

__all__ = [
    "Abrmd",
    "DBusSession",
    "Dockerd",
    "LatencyForwarder",
    "Registry",
    "SwTpm",
    "TestTpm",
    "TpmTiming",
    "build_docker_archive",
    "free_port",
    "shared_bus",
]
