"""The lab's /dev/tpmrm0 stand-in keeps the kernel's file contract (tpm-dev-common.c), byte by byte.

Raw TPM commands, no TSS: what tpm2-tss's device TCTI and tpmtls's transport rely on.
"""

from __future__ import annotations

import errno
import os
import select
import struct

import pytest

from support.device import require_device
from tpmtls.testing import TpmTiming

GET_RANDOM_8 = struct.pack(">HIIH", 0x8001, 12, 0x17B, 8)  # TPM2_GetRandom(8)


@pytest.fixture(scope="module")
def slow_device(tmp_path_factory):
    """Every command takes 0.3 s, so a response is not there yet right after the write."""
    require_device()
    from tpmtls.lab.tpmrm import DeviceTpm

    with DeviceTpm(tmp_path_factory.mktemp("standin"), timing=TpmTiming(durations={}, other=0.3)) as t:
        yield t.tcti.split(":", 1)[1]


def readable(fd: int, ms: int) -> bool:
    p = select.poll()
    p.register(fd, select.POLLIN)
    return bool(p.poll(ms))


def test_nonblocking_write_then_poll_then_read_in_parts(slow_device):
    fd = os.open(slow_device, os.O_RDWR | os.O_NONBLOCK)
    try:
        assert os.write(fd, GET_RANDOM_8) == len(GET_RANDOM_8)  # returns at once: the command runs meanwhile
        assert not readable(fd, 0)  # POLLIN only once the response waits
        with pytest.raises(OSError) as busy:
            os.write(fd, GET_RANDOM_8)  # one command at a time per open file
        assert busy.value.errno == errno.EBUSY
        assert readable(fd, 10_000)
        header = os.read(fd, 10)  # ESYS reads the header first
        tag, size, rc = struct.unpack(">HII", header)
        assert (tag, rc) == (0x8001, 0) and size == 10 + 2 + 8
        assert len(os.read(fd, 4096)) == size - 10
        assert os.read(fd, 4096) == b""  # nothing more until the next command
    finally:
        os.close(fd)


def test_a_forked_child_shares_the_open_file(slow_device):
    fd = os.open(slow_device, os.O_RDWR | os.O_NONBLOCK)
    try:
        pid = os.fork()
        if pid == 0:  # the child sends a command on the parent's open file and leaves
            try:
                os.write(fd, GET_RANDOM_8)
                os._exit(0)
            except BaseException:  # noqa: BLE001 - the child reports by exit status
                os._exit(1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert readable(fd, 10_000)  # the parent reads the child's response: one file, one space
        assert struct.unpack(">HII", os.read(fd, 4096)[:10])[2] == 0
    finally:
        os.close(fd)


def test_a_whole_command_per_write(slow_device):
    fd = os.open(slow_device, os.O_RDWR | os.O_NONBLOCK)
    try:
        os.write(fd, GET_RANDOM_8[:10])  # a header whose size field (12) exceeds the write (10)
        assert readable(fd, 10_000)
        with pytest.raises(OSError) as err:
            os.read(fd, 4096)
        assert err.value.errno == errno.E2BIG
    finally:
        os.close(fd)
