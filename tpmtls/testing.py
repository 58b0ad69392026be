"""Software TPMs for testing your own code: swtpm + tpm2-abrmd on a private D-Bus.

    from tpmtls.testing import TestTpm, TpmTiming

    with TestTpm() as t:                       # a real TPM 2.0, on 127.0.0.1 only
        tpm = tpmtls.connect(t.tcti)           # in-process clients
        subprocess.run([...], env={**os.environ, **t.env})   # and subprocesses

    TestTpm(timing=TpmTiming.with_sign(50))    # at a hardware TPM's pace

Everything started is stopped by PID when the `with` block ends (or at interpreter
exit). The TPM never touches the machine's TPM, system bus, or non-loopback ports.
"""

from .lab.abrmd import Abrmd
from .lab.dbus import DBusSession
from .lab.latency import TpmTiming
from .lab.ports import free_port
from .lab.stack import TestTpm
from .lab.swtpm import SwTpm

__all__ = ["Abrmd", "DBusSession", "SwTpm", "TestTpm", "TpmTiming", "free_port"]
