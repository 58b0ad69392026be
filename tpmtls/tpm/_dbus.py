"""Just enough of a D-Bus client to ask tpm2-abrmd for a TPM connection, with deadlines.

Why not GLib (what libtss2-tcti-tabrmd uses): GLib keeps one session-bus connection
per process and does its I/O on a private "gdbus" thread. After fork() the child
inherits that connection's socket (shared with the parent: anything the child sends
interleaves with the parent's messages) but not the thread, so every D-Bus call in the
child waits for GDBus's 25 s default timeout (measured: a new tabrmd TCTI in a forked
child failed after 25.0 s, "StartServiceByName … Timeout was reached"), and no
configuration reaches that timeout. During an outage the same library prints a GLib
WARNING line per reconnect attempt. Here each connection is our own socket, every read
and write has a deadline, and nothing is shared across fork.

Wire format: D-Bus specification, "Message Protocol" and "Authentication Protocol"
(SASL EXTERNAL, NEGOTIATE_UNIX_FD). Little-endian messages, unix-socket buses only.
"""

from __future__ import annotations

import array
import os
import socket
import struct
import time
from urllib.parse import unquote

_METHOD_CALL, _METHOD_RETURN, _ERROR = 1, 2, 3
(_F_PATH, _F_INTERFACE, _F_MEMBER, _F_ERROR_NAME, _F_REPLY_SERIAL, _F_DESTINATION, _F_SENDER, _F_SIGNATURE,
 _F_UNIX_FDS) = range(1, 10)
_SYSTEM_BUS = "unix:path=/var/run/dbus/system_bus_socket"
_MAX_MESSAGE = 1 << 20  # far above anything a bus daemon or tpm2-abrmd sends us


class DBusError(OSError):
    """The bus or the peer could not be reached, or refused."""


class DBusTimeout(DBusError):
    """The bus or the peer did not answer by the deadline."""


def bus_address(bus_type: str) -> str:
    """The address of the session or system bus, as libdbus and GLib find it."""
    if bus_type == "session":
        address = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
        if not address:
            raise DBusError("$DBUS_SESSION_BUS_ADDRESS is not set (no session bus)")
        return address
    if bus_type == "system":
        return os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or _SYSTEM_BUS
    raise DBusError(f"unknown D-Bus bus type {bus_type!r} (session or system)")


def _unix_targets(address: str) -> list[str | bytes]:
    """Socket paths of the unix: entries of a D-Bus address (abstract names as bytes)."""
    targets: list[str | bytes] = []
    for entry in address.split(";"):
        transport, _, params = entry.partition(":")
        if transport != "unix":
            continue
        kv = dict(p.split("=", 1) for p in params.split(",") if "=" in p)
        if "path" in kv:
            targets.append(unquote(kv["path"]))
        elif "abstract" in kv:
            targets.append(b"\0" + unquote(kv["abstract"]).encode())
    if not targets:
        raise DBusError(f"no unix: socket in D-Bus address {address!r}")
    return targets


class _Writer:
    def __init__(self) -> None:
        self.buf = bytearray()

    def align(self, n: int) -> None:
        self.buf += b"\0" * (-len(self.buf) % n)

    def u32(self, v: int) -> None:
        self.align(4)
        self.buf += struct.pack("<I", v)

    def string(self, s: str) -> None:
        data = s.encode()
        self.u32(len(data))
        self.buf += data + b"\0"

    def signature(self, s: str) -> None:
        self.buf += bytes([len(s)]) + s.encode() + b"\0"


class _Reader:
    def __init__(self, buf: bytes, pos: int = 0) -> None:
        self.buf, self.pos = buf, pos

    def align(self, n: int) -> None:
        self.pos += -self.pos % n

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise DBusError("malformed D-Bus message (truncated)")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def u32(self) -> int:
        self.align(4)
        return int(struct.unpack("<I", self.take(4))[0])

    def u64(self) -> int:
        self.align(8)
        return int(struct.unpack("<Q", self.take(8))[0])

    def string(self) -> str:
        n = self.u32()
        s = self.take(n + 1)[:-1]
        return s.decode("utf-8", "replace")

    def signature(self) -> str:
        n = self.take(1)[0]
        return self.take(n + 1)[:-1].decode("ascii", "replace")

    def value(self, sig: str) -> object:
        if sig in ("s", "o"):
            return self.string()
        if sig == "g":
            return self.signature()
        if sig in ("u", "h"):
            return self.u32()
        if sig == "t":
            return self.u64()
        if sig == "y":
            return self.take(1)[0]
        raise DBusError(f"unexpected D-Bus header field type {sig!r}")


class Message:
    """One received message: type, header fields, body, and the file descriptors it carried."""

    def __init__(self, kind: int, fields: dict[int, object], body: bytes, fds: list[int]) -> None:
        self.kind, self.fields, self.body, self.fds = kind, fields, body, fds


class Connection:
    """A private, authenticated connection to a bus; every operation ends by `deadline`."""

    def __init__(self, address: str, deadline: float) -> None:
        self._serial = 0
        self._fds: list[int] = []
        self._pending = b""
        last: OSError | None = None
        for target in _unix_targets(address):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(_remaining(deadline))
                sock.connect(target)
            except socket.timeout:
                sock.close()
                raise DBusTimeout(f"the D-Bus bus at {address!r} did not accept a connection in time") from None
            except OSError as e:
                sock.close()
                last = e
                continue
            self.sock = sock
            break
        else:
            raise DBusError(f"cannot connect to the D-Bus bus at {address!r}: {last}")
        try:
            self._authenticate(deadline)
            self._call(deadline, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "Hello")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        self.sock.close()

    def call(self, deadline: float, destination: str, path: str, interface: str, member: str) -> Message:
        """Call a method without arguments; returns the reply (D-Bus errors raise DBusError)."""
        return self._call(deadline, destination, path, interface, member)

    # -- internals ----------------------------------------------------------------

    def _authenticate(self, deadline: float) -> None:
        uid = str(os.geteuid()).encode().hex()
        self._send(deadline, b"\0AUTH EXTERNAL " + uid.encode() + b"\r\n")
        line = self._line(deadline)
        if not line.startswith(b"OK "):
            raise DBusError(f"the D-Bus bus refused authentication: {line.decode(errors='replace')}")
        self._send(deadline, b"NEGOTIATE_UNIX_FD\r\n")
        line = self._line(deadline)
        if line != b"AGREE_UNIX_FD":
            raise DBusError("the D-Bus bus does not pass file descriptors")
        self._send(deadline, b"BEGIN\r\n")

    def _line(self, deadline: float) -> bytes:
        while b"\r\n" not in self._pending:
            if len(self._pending) > 4096:
                raise DBusError("malformed D-Bus authentication reply")
            self._pending += self._recv(deadline, 4096)
        line, _, self._pending = self._pending.partition(b"\r\n")
        return line

    def _send(self, deadline: float, data: bytes) -> None:
        self.sock.settimeout(_remaining(deadline))
        try:
            self.sock.sendall(data)
        except socket.timeout:
            raise DBusTimeout("the D-Bus bus did not take our message in time") from None

    def _recv(self, deadline: float, n: int) -> bytes:
        self.sock.settimeout(_remaining(deadline))
        try:
            data, ancdata, _, _ = self.sock.recvmsg(n, socket.CMSG_SPACE(16 * 4))
        except socket.timeout:
            raise DBusTimeout("no answer on the D-Bus bus in time") from None
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                self._fds.extend(fds)
        if not data:
            raise DBusError("the D-Bus bus closed the connection")
        return data

    def _read_exact(self, deadline: float, n: int) -> bytes:
        while len(self._pending) < n:
            self._pending += self._recv(deadline, max(4096, n - len(self._pending)))
        out, self._pending = self._pending[:n], self._pending[n:]
        return out

    def _call(self, deadline: float, destination: str, path: str, interface: str, member: str) -> Message:
        self._serial += 1
        serial = self._serial
        fields = _Writer()
        for code, sig, value in (
            (_F_PATH, "o", path),
            (_F_INTERFACE, "s", interface),
            (_F_MEMBER, "s", member),
            (_F_DESTINATION, "s", destination),
        ):
            fields.align(8)
            fields.buf += bytes([code])
            fields.signature(sig)
            fields.string(value)
        header = struct.pack("<cBBBIII", b"l", _METHOD_CALL, 0, 1, 0, serial, len(fields.buf)) + bytes(fields.buf)
        header += b"\0" * (-len(header) % 8)
        self._send(deadline, header)
        for _ in range(64):  # bounded: signals (NameAcquired…) may arrive before the reply
            message = self._read_message(deadline)
            if message.fields.get(_F_REPLY_SERIAL) != serial:
                self._drop_fds(message)
                continue
            if message.kind == _ERROR:
                self._drop_fds(message)
                text = _Reader(message.body).string() if str(message.fields.get(_F_SIGNATURE, "")).startswith("s") else ""
                raise DBusError(f"{message.fields.get(_F_ERROR_NAME)}: {text}".rstrip(": "))
            return message
        raise DBusError(f"no reply to {interface}.{member} among the bus's messages")

    def _read_message(self, deadline: float) -> Message:
        fixed = self._read_exact(deadline, 16)
        if fixed[:1] != b"l":
            raise DBusError("big-endian D-Bus messages are not supported")
        kind = fixed[1]
        body_len, _, fields_len = struct.unpack("<III", fixed[4:16])
        if body_len > _MAX_MESSAGE or fields_len > _MAX_MESSAGE:
            raise DBusError("D-Bus message too large")
        padded = fields_len + (-(16 + fields_len) % 8)
        raw_fields = self._read_exact(deadline, padded)
        body = self._read_exact(deadline, body_len)
        reader = _Reader(fixed + raw_fields, 16)
        fields: dict[int, object] = {}
        while reader.pos < 16 + fields_len:
            reader.align(8)
            code = reader.take(1)[0]
            fields[code] = reader.value(reader.signature())
        count = int(fields.get(_F_UNIX_FDS, 0))  # type: ignore[call-overload]
        fds, self._fds = self._fds[:count], self._fds[count:]
        return Message(kind, fields, body, fds)

    @staticmethod
    def _drop_fds(message: Message) -> None:
        for fd in message.fds:
            os.close(fd)


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise DBusTimeout("timed out")
    return left
