"""TPM transports with a deadline on every command: TPM devices, tpm2-abrmd and swtpm, in Python.

tpm2-tss's TCTIs cannot bound a command: ESYS's synchronous calls loop on
TSS2_BASE_RC_TRY_AGAIN, so `Esys_SetTimeout` only turns a hang into a busy wait, and
the swtpm/mssim TCTIs ignore the timeout altogether ("The underlying IPC mechanism
does not support asynchronous I/O"). A SIGSTOPped swtpm therefore hung `tpmtls key
create` for ever. The tabrmd TCTI is not fork-safe either (see `_dbus`). So for these
TCTI kinds, and for TPM devices (`device:`, /dev/tpmrmN and /dev/tpmN), tpmtls speaks
the (small) wire protocols itself through tpm2-pytss's `PyTCTI`: every connect, write
and read has a deadline, and a command that misses it fails with TSS2_TCTI_RC_IO_ERROR
on a context that is then never used again (its late response must not be read as
the answer to the next command). Other TCTIs (mssim, libtpms, a TCTI module named by
file …) go through tpm2-tss's loader unchanged.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import threading
import time
from abc import ABC, abstractmethod

from tpm2_pytss import TSS2_Exception
from tpm2_pytss.constants import TPM2_RC, TSS2_RC
from tpm2_pytss.TCTI import PyTCTI

from . import _dbus
from .tcti import device_path, is_direct

_HEADER = 10  # TPM 2.0 Part 1, 18.2: tag (2), size (4), code (4)
_MAX_RESPONSE = 4096  # TPM2_MAX_COMMAND_SIZE in tpm2-tss
_TABRMD_PATH = "/com/intel/tss2/Tabrmd/Tcti"
_TABRMD_IFACE = "com.intel.tss2.TctiTabrmd"
_SWTPM_SEND_COMMAND = 8  # TPM_SEND_COMMAND of the simulator protocol (swtpm, mssim)


class TransportTimeout(TSS2_Exception):
    """A TPM command or connect missed its deadline; the context must be thrown away."""

    def __init__(self, seconds: float) -> None:
        super().__init__(TSS2_RC.TCTI_RC_IO_ERROR)
        self.seconds = seconds


class TransportUnavailable(TSS2_Exception):
    """No connection to the TPM's service; `reason` says why (for the one-line error)."""

    def __init__(self, reason: str) -> None:
        super().__init__(TSS2_RC.TCTI_RC_NO_CONNECTION)
        self.reason = reason


def _conf(tcti: str) -> tuple[str, dict[str, str]]:
    name, _, conf = tcti.partition(":")
    return name, dict(p.split("=", 1) for p in conf.split(",") if "=" in p)


def handles(tcti: str) -> bool:
    """True when tpmtls speaks this TCTI's protocol itself (bounded, fork-safe)."""
    name, _ = _conf(tcti)
    return name in ("tabrmd", "swtpm", "device")


def open_transport(tcti: str, timeout: float) -> StreamTcti:
    """Connect to the TPM behind a 'tabrmd:…', 'swtpm:…' or 'device:…' TCTI within `timeout` seconds."""
    name, conf = _conf(tcti)
    if name == "device":
        return DeviceTcti(device_path(tcti), timeout, direct=is_direct(tcti))
    if name == "tabrmd":
        return TabrmdTcti(conf, timeout)
    if name == "swtpm":
        return SwtpmTcti(conf, timeout)
    raise ValueError(f"no Python transport for TCTI {tcti!r}")


class StreamTcti(PyTCTI, ABC):
    """A command/response byte stream to a TPM with a deadline per command.

    Used by one thread at a time (the pool's contract). After fork() the child never
    touches the parent's sockets: `close()` is a no-op outside the creating process.
    """

    def __init__(self, timeout: float) -> None:
        super().__init__(max_size=_MAX_RESPONSE, magic=b"TPMTLS\0\0")
        self.timeout = timeout
        self.timed_out: TransportTimeout | None = None
        self._pid = os.getpid()
        self._deadline = 0.0

    # PyTCTI interface -----------------------------------------------------------

    def do_transmit(self, command: bytes) -> None:
        self._check_usable()
        self._deadline = time.monotonic() + self.timeout
        self._send(command)

    def do_receive(self, timeout: int) -> bytes:
        # ESYS's synchronous calls pass TSS2_TCTI_TIMEOUT_BLOCK (-1); our own bound applies.
        self._check_usable()
        return self._receive()

    def do_finalize(self) -> None:
        self.close()

    # helpers ----------------------------------------------------------------------

    def close(self) -> None:
        if os.getpid() == self._pid:
            self._close()

    @property
    def unavailable(self) -> TransportUnavailable | None:
        """Why the last command found no TPM to talk to (tpm2-pytss keeps only the rc)."""
        last = self._last_exception
        return last if isinstance(last, TransportUnavailable) else None

    def _check_usable(self) -> None:
        if self.timed_out is not None:
            raise self.timed_out
        if os.getpid() != self._pid:
            raise TSS2_Exception(TSS2_RC.TCTI_RC_IO_ERROR)  # the parent's connection

    def _remaining(self) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            self._expire()
        return left

    def _expire(self) -> None:
        self.timed_out = TransportTimeout(self.timeout)
        self.close()
        raise self.timed_out

    def _io(self, sock: socket.socket, what: str, n: int = 0, data: bytes = b"") -> bytes:
        """sendall(data) or read exactly n bytes, within the command's deadline."""
        out = bytearray()
        try:
            if data:
                sock.settimeout(self._remaining())
                sock.sendall(data)
                return b""
            while len(out) < n:
                sock.settimeout(self._remaining())
                chunk = sock.recv(n - len(out))
                if not chunk:
                    raise TSS2_Exception(TSS2_RC.TCTI_RC_IO_ERROR)
                out += chunk
        except socket.timeout:
            self._expire()
        except OSError:
            raise TSS2_Exception(TSS2_RC.TCTI_RC_IO_ERROR) from None
        return bytes(out)

    def _read_response(self, sock: socket.socket) -> bytes:
        header = self._io(sock, "read", _HEADER)
        size = struct.unpack(">I", header[2:6])[0]
        if not _HEADER <= size <= _MAX_RESPONSE:
            raise TSS2_Exception(TSS2_RC.TCTI_RC_MALFORMED_RESPONSE)
        return header + self._io(sock, "read", size - _HEADER)

    @abstractmethod
    def _send(self, command: bytes) -> None:
        """Write one command (connecting first where the protocol wants a connection per command)."""

    @abstractmethod
    def _receive(self) -> bytes:
        """Read the whole response to the command last sent."""

    @abstractmethod
    def _close(self) -> None:
        """Drop the connection."""


class TabrmdTcti(StreamTcti):
    """tpm2-abrmd: CreateConnection over D-Bus hands us a socket; commands go over it raw.

    Config as for libtss2-tcti-tabrmd: `bus_name` (default com.intel.tss2.Tabrmd) and
    `bus_type` (system or session; default system).
    """

    def __init__(self, conf: dict[str, str], timeout: float) -> None:
        super().__init__(timeout)
        bus_name = conf.get("bus_name", "com.intel.tss2.Tabrmd")
        deadline = time.monotonic() + timeout
        bus: _dbus.Connection | None = None
        try:
            bus = _dbus.Connection(_dbus.bus_address(conf.get("bus_type", "system")), deadline)
            reply = bus.call(deadline, bus_name, _TABRMD_PATH, _TABRMD_IFACE, "CreateConnection")
        except _dbus.DBusTimeout:
            raise TransportTimeout(timeout) from None
        except OSError as e:  # DBusError included: no bus, no tpm2-abrmd on it, refused
            raise TransportUnavailable(str(e)) from None
        finally:
            if bus is not None:
                # tpm2-abrmd keys the TPM connection by its socket, not by our bus connection.
                bus.close()
        if not reply.fds:
            raise TransportUnavailable("tpm2-abrmd's CreateConnection reply carried no socket")
        for extra in reply.fds[1:]:
            os.close(extra)
        self._sock = socket.socket(fileno=reply.fds[0])
        self._sock.setblocking(True)

    def do_set_locality(self, locality: int) -> None:
        # tpm2-abrmd takes it over D-Bus (SetLocality); tpmtls only ever uses locality 0.
        if locality != 0:
            raise TSS2_Exception(TSS2_RC.TCTI_RC_NOT_IMPLEMENTED)

    def _send(self, command: bytes) -> None:
        self._io(self._sock, "write", data=command)

    def _receive(self) -> bytes:
        return self._read_response(self._sock)

    def _close(self) -> None:
        self._sock.close()


class SwtpmTcti(StreamTcti):
    """swtpm's TPM socket (the simulator protocol), one TCP connection per command.

    Config as for libtss2-tcti-swtpm: `host` (default localhost) and `port` (2321), or
    `path` for a unix socket. A connection per command, as tpm2-tss does, lets several
    clients interleave on a server that serves one connection at a time.
    """

    def __init__(self, conf: dict[str, str], timeout: float) -> None:
        super().__init__(timeout)
        self._path = conf.get("path")
        port = conf.get("port", "2321")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise TransportUnavailable(f"swtpm TCTI: port {port[:20]!r} is not a port number (1-65535)")
        self._address = (conf.get("host", "localhost"), int(port))
        self._locality = 0
        self._sock: socket.socket | None = None

    def do_set_locality(self, locality: int) -> None:
        self._locality = locality

    def _send(self, command: bytes) -> None:
        self._close()
        try:
            if self._path:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self._remaining())
                sock.connect(self._path)
            else:
                sock = socket.create_connection(self._address, timeout=self._remaining())
        except socket.timeout:
            self._expire()
        except OSError as e:
            where = self._path or "{}:{}".format(*self._address)
            raise TransportUnavailable(f"swtpm at {where}: {e.strerror or e}") from None
        self._sock = sock
        frame = struct.pack(">IBI", _SWTPM_SEND_COMMAND, self._locality, len(command)) + command
        self._io(sock, "write", data=frame)

    def _receive(self) -> bytes:
        sock = self._sock
        if sock is None:
            raise TSS2_Exception(TSS2_RC.TCTI_RC_BAD_SEQUENCE)
        size = struct.unpack(">I", self._io(sock, "read", 4))[0]
        if not _HEADER <= size <= _MAX_RESPONSE:
            raise TSS2_Exception(TSS2_RC.TCTI_RC_MALFORMED_RESPONSE)
        response = self._io(sock, "read", size)
        self._io(sock, "read", 4)  # the simulator's trailing acknowledgement (0)
        self._close()
        return response

    def _close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


# What to do about a TPM device that cannot be opened, by errno (one line each).
_UDEV_RULE = 'KERNEL=="tpmrm[0-9]*", GROUP="tss", MODE="0660"'


def open_failure(path: str, e: OSError, direct: bool) -> str:
    """What to do about a TPM device that cannot be opened (or stat'ed), in one line."""
    if e.errno == errno.ENOENT:
        return (f"{path}: no such device: this machine has no TPM, or its driver is not loaded "
                "(see 'ls /dev/tpm*'; 'modprobe tpm_crb' or 'tpm_tis')")
    if e.errno in (errno.EACCES, errno.EPERM):
        return (f"{path}: permission denied: add the user to the tss group ('sudo usermod -aG tss $USER', then log "
                f"in again) or give the device a udev rule ({_UDEV_RULE})")
    if e.errno == errno.EBUSY and direct:
        return (f"{path}: another process holds it (a /dev/tpmN serves one user at a time): stop that process "
                f"(see 'fuser -v {path}') or use the resource manager /dev/tpmrmN")
    return f"{path}: {os.strerror(e.errno or errno.EIO)}"


class DeviceTcti(StreamTcti):
    """A TPM character device (/dev/tpmrmN, /dev/tpmN): open, write a command, poll, read the response.

    The kernel's contract (drivers/char/tpm/tpm-dev-common.c): opened O_NONBLOCK, one
    whole command per write() runs in the background; poll() reports POLLIN once its
    response (or error) waits; read() returns it. So the deadline is a poll timeout, and
    no thread waits on a TPM. A file whose command missed its deadline is closed in the
    background: the kernel's release waits for that command to finish.
    """

    def __init__(self, path: str, timeout: float, direct: bool = False) -> None:
        super().__init__(timeout)
        self.path = path
        self._pending = False
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            try:
                self._fd: int | None = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
                break
            except OSError as e:
                # Busy (another user of a /dev/tpmN, a device being reset): try again within the bound.
                if e.errno in (errno.EBUSY, errno.EAGAIN, errno.EINTR) and time.monotonic() + delay < deadline:
                    time.sleep(delay)
                    delay = min(delay * 2, 0.25)
                    continue
                raise TransportUnavailable(open_failure(path, e, direct)) from None
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN)

    def do_set_locality(self, locality: int) -> None:
        if locality != 0:  # the kernel's device files offer locality 0 only
            raise TSS2_Exception(TSS2_RC.TCTI_RC_NOT_IMPLEMENTED)

    def _fail(self, what: str, e: OSError) -> TransportUnavailable:
        return TransportUnavailable(f"{self.path}: {what} failed: {os.strerror(e.errno or errno.EIO)}")

    def _send(self, command: bytes) -> None:
        assert self._fd is not None
        try:
            written = os.write(self._fd, command)
        except OSError as e:
            raise self._fail("write", e) from None
        if written != len(command):
            raise TransportUnavailable(f"{self.path}: took {written} of a {len(command)}-byte command")
        self._pending = True

    def _receive(self) -> bytes:
        assert self._fd is not None
        response = b""
        for _ in range(64):  # bounded: a response arrives in one read, or a few parts
            if not self._poll.poll(max(1, int(self._remaining() * 1000))):
                self._remaining()  # raises the timeout once the deadline has passed
                continue
            try:
                chunk = os.read(self._fd, _MAX_RESPONSE - len(response))
            except OSError as e:
                self._pending = False
                if e.errno == errno.ENOMEM:
                    # The kernel's per-file space is full (three objects): answer as the TPM
                    # would, so the pool frees a slot and tries again instead of reconnecting.
                    return struct.pack(">HII", 0x8001, _HEADER, int(TPM2_RC.OBJECT_MEMORY))
                raise self._fail("read", e) from None
            if not chunk:
                raise TransportUnavailable(f"{self.path}: the device returned no response")
            response += chunk
            if len(response) >= _HEADER:
                size = struct.unpack(">I", response[2:6])[0]
                if not _HEADER <= size <= _MAX_RESPONSE:
                    raise TSS2_Exception(TSS2_RC.TCTI_RC_MALFORMED_RESPONSE)
                if len(response) >= size:
                    self._pending = False
                    return response[:size]
        raise TSS2_Exception(TSS2_RC.TCTI_RC_MALFORMED_RESPONSE)

    def _close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if self._pending:
            # close() would wait for the command the kernel is still running (a hung TPM):
            # let a daemon thread wait for it, never the caller.
            threading.Thread(target=_close_quietly, args=(fd,), name="tpmtls-device-close", daemon=True).start()
        else:
            _close_quietly(fd)


def _close_quietly(fd: int) -> None:
    """Close a device file; a device that went away (ENODEV, ENOTCONN, EIO) has nothing left to close."""
    try:
        os.close(fd)
    except OSError:
        pass
