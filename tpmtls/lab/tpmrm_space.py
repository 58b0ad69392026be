"""The kernel's TPM resource manager (`tpmrm`), modelled in Python for the /dev/tpmrm0 stand-in.

Linux gives each open file of /dev/tpmrmN its own *space* (drivers/char/tpm/tpm2-space.c):
three transient object slots and three session slots. Around **every** command it loads
every saved object and session of that file into the TPM (TPM2_ContextLoad), maps the
virtual handles in the command's handle area to the physical ones, runs the command,
gives a new object or session in the response a slot (none free: the new one is flushed
and the command fails with ENOMEM), then saves every object (ContextSave + FlushContext)
and every session (ContextSave) again. Virtual handles count down from 0x80ffffff.
tpm2-abrmd swaps only the objects a command names, so a stand-in built on it would hide
the kernel's cost; this one sends the same TPM commands the kernel does, to a real
swtpm (through the latency forwarder when the lab models a hardware pace).

Where this differs from the kernel is listed in docs/tpm-device.md.
"""

from __future__ import annotations

import errno
import socket
import struct
import threading
from dataclasses import dataclass, field

TPM_ST_NO_SESSIONS, TPM_ST_SESSIONS = 0x8001, 0x8002
CC_CONTEXT_LOAD, CC_CONTEXT_SAVE, CC_FLUSH_CONTEXT, CC_GET_CAPABILITY = 0x161, 0x162, 0x165, 0x17A
CAP_COMMANDS, CAP_HANDLES = 0x2, 0x1
RC_HANDLE, RC_REFERENCE_H0 = 0x08B, 0x910
SLOTS = 3  # objects per space, and sessions per space (TPM2_MAX_CONTEXT_SIZE … the kernel's tables)
_VIRTUAL_TOP = 0x80FFFFFF
_SEND_COMMAND = 8  # TPM_SEND_COMMAND of the simulator protocol
_HEADER = 10


class SpaceError(OSError):
    """A command this space cannot run; `errno` is what the kernel's read() would return."""


def _is_transient(handle: int) -> bool:
    return handle >> 24 == 0x80


def _is_session(handle: int) -> bool:
    return handle >> 24 in (0x02, 0x03)


def _rc(response: bytes) -> int:
    return struct.unpack(">I", response[6:10])[0]


def _command(cc: int, body: bytes) -> bytes:
    return struct.pack(">HII", TPM_ST_NO_SESSIONS, _HEADER + len(body), cc) + body


class TpmLink:
    """One connection to swtpm's TPM port (simulator protocol), used under the caller's lock.

    Reconnects on the next command after a failure (a restarted swtpm). `timeout` bounds
    each command, like the kernel's command durations (generous: a frozen TPM blocks
    every open file until then, as on a real machine).
    """

    def __init__(self, host: str, port: int, timeout: float = 300.0) -> None:
        self.address = (host, port)
        self.timeout = timeout
        self._sock: socket.socket | None = None

    def transmit(self, command: bytes) -> bytes:
        try:
            if self._sock is None:
                self._sock = socket.create_connection(self.address, timeout=self.timeout)
            sock = self._sock
            sock.sendall(struct.pack(">IBI", _SEND_COMMAND, 0, len(command)) + command)
            size = struct.unpack(">I", self._exact(sock, 4))[0]
            if not _HEADER <= size <= 1 << 16:
                raise OSError(errno.EIO, f"TPM response of {size} bytes")
            response = self._exact(sock, size)
            self._exact(sock, 4)  # the simulator's trailing acknowledgement
            return response
        except OSError as e:
            self.close()
            raise SpaceError(errno.EIO, f"TPM transport: {e}") from None

    @staticmethod
    def _exact(sock: socket.socket, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            chunk = sock.recv(n - len(out))
            if not chunk:
                raise OSError(errno.EPIPE, "the TPM closed the connection")
            out += chunk
        return bytes(out)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


@dataclass
class Chip:
    """The TPM behind every space: one command at a time, and its command attribute table."""

    link: TpmLink
    lock: threading.Lock = field(default_factory=threading.Lock)
    _attributes: dict[int, tuple[int, bool]] = field(default_factory=dict)
    commands: int = 0  # TPM commands sent, the resource manager's own included

    def send(self, command: bytes) -> bytes:
        """One command to the TPM (caller holds `lock`)."""
        self.commands += 1
        return self.link.transmit(command)

    def attributes(self, cc: int) -> tuple[int, bool]:
        """(handles in the command's handle area, response carries a handle) from TPM2_GetCapability(COMMANDS).

        The kernel reads the same table at boot (tpm2_get_cc_attrs_tbl).
        """
        if not self._attributes:
            first, more = 0x11F, True
            for _ in range(8):  # bounded: the TPM lists ~120 commands, a page at a time
                if not more:
                    break
                response = self.send(_command(CC_GET_CAPABILITY, struct.pack(">III", CAP_COMMANDS, first, 256)))
                if _rc(response):
                    raise SpaceError(errno.EIO, f"TPM2_GetCapability(COMMANDS) failed: 0x{_rc(response):x}")
                more = bool(response[10])
                (count,) = struct.unpack(">I", response[15:19])
                for i in range(count):
                    (a,) = struct.unpack(">I", response[19 + 4 * i:23 + 4 * i])
                    self._attributes[a & 0xFFFF] = ((a >> 25) & 7, bool((a >> 28) & 1))
                    first = (a & 0xFFFF) + 1
        if cc not in self._attributes:
            raise SpaceError(errno.EINVAL, f"command 0x{cc:x} is not one this TPM implements")
        return self._attributes[cc]


class Space:
    """One open file's objects and sessions, kept as saved contexts between its commands."""

    def __init__(self, chip: Chip, slots: int = SLOTS) -> None:
        self.chip = chip
        self.slots = slots  # fewer than the kernel's three: a TPM with more slots than the space
        self.objects: list[bytes | None] = [None] * slots  # saved object contexts, by virtual slot
        self.sessions: dict[int, bytes | None] = {}  # session handle -> saved context

    # -- the kernel's tpm2_prepare_space / map / commit ------------------------------
    def run(self, command: bytes) -> bytes:
        """Run one client command in this space (serialised with every other space)."""
        if len(command) < _HEADER:
            raise SpaceError(errno.EINVAL, "command shorter than a TPM header")
        tag, size, cc = struct.unpack(">HII", command[:_HEADER])
        if size > len(command):
            raise SpaceError(errno.E2BIG, "the command's size field exceeds what was written")
        command = command[:size]
        with self.chip.lock:
            n_handles, returns_handle = self.chip.attributes(cc)
            physical = self._load_all()
            try:
                mapped = self._map_command(command, cc, n_handles, physical)
                response = self.chip.send(mapped)
                response = self._map_response(response, cc, returns_handle, physical, command)
            finally:
                self._save_all(physical)
            return response

    def _load_all(self) -> dict[int, int]:
        """ContextLoad every saved object (slot -> physical handle) and session."""
        physical: dict[int, int] = {}
        try:
            for slot, blob in enumerate(self.objects):
                if blob is not None:
                    physical[slot] = self._context_load(blob)
            for handle, blob in list(self.sessions.items()):
                if blob is not None:
                    try:
                        self._context_load(blob)
                    except _Gone:
                        del self.sessions[handle]  # flushed outside this space
                        continue
                    self.sessions[handle] = None  # loaded
        except BaseException:
            self._save_all(physical)
            raise
        return physical

    def _context_load(self, blob: bytes) -> int:
        response = self.chip.send(_command(CC_CONTEXT_LOAD, blob))
        rc = _rc(response)
        if rc == RC_REFERENCE_H0 or rc & 0xBF == RC_HANDLE:  # TPM_RC_HANDLE of any handle number
            raise _Gone()
        if rc:
            # e.g. TPM_RC_INTEGRITY after a TPM reset: the kernel fails the command (EINVAL/EFAULT)
            raise SpaceError(errno.EFAULT, f"TPM2_ContextLoad failed: 0x{rc:x}")
        return struct.unpack(">I", response[10:14])[0]

    def _save_all(self, physical: dict[int, int]) -> None:
        """ContextSave + FlushContext every loaded object; ContextSave every loaded session."""
        for slot, handle in physical.items():
            blob = self._context_save(handle)
            self.objects[slot] = blob
            if blob is not None:
                self.chip.send(_command(CC_FLUSH_CONTEXT, struct.pack(">I", handle)))
        for handle, blob in list(self.sessions.items()):
            if blob is None:
                saved = self._context_save(handle)
                if saved is None:
                    del self.sessions[handle]
                else:
                    self.sessions[handle] = saved

    def _context_save(self, handle: int) -> bytes | None:
        """The saved context (a marshalled TPMS_CONTEXT), or None when the handle is gone."""
        try:
            response = self.chip.send(_command(CC_CONTEXT_SAVE, struct.pack(">I", handle)))
        except SpaceError:
            return None
        return response[_HEADER:] if _rc(response) == 0 else None

    def _map_command(self, command: bytes, cc: int, n_handles: int, physical: dict[int, int]) -> bytes:
        out = bytearray(command)
        offsets = [_HEADER + 4 * i for i in range(n_handles)]
        if cc == CC_FLUSH_CONTEXT:
            offsets = [_HEADER]  # its handle is a parameter
        for at in offsets:
            (handle,) = struct.unpack(">I", out[at:at + 4])
            if _is_transient(handle):
                slot = _VIRTUAL_TOP - handle
                if not 0 <= slot < self.slots or slot not in physical:
                    raise SpaceError(errno.EINVAL, f"handle 0x{handle:08x} is not an object of this file")
                struct.pack_into(">I", out, at, physical[slot])
        return bytes(out)

    def _map_response(self, response: bytes, cc: int, returns_handle: bool, physical: dict[int, int],
                      command: bytes) -> bytes:
        if _rc(response):
            return response
        if cc == CC_FLUSH_CONTEXT:
            (handle,) = struct.unpack(">I", command[_HEADER:_HEADER + 4])
            if _is_transient(handle):
                slot = _VIRTUAL_TOP - handle
                physical.pop(slot, None)
                self.objects[slot] = None
            else:
                self.sessions.pop(handle, None)
            return response
        out = bytearray(response)
        if returns_handle and len(out) >= _HEADER + 4:
            (handle,) = struct.unpack(">I", out[_HEADER:_HEADER + 4])
            if _is_transient(handle):
                free = [s for s in range(self.slots) if self.objects[s] is None and s not in physical]
                if not free:
                    self.chip.send(_command(CC_FLUSH_CONTEXT, struct.pack(">I", handle)))
                    raise SpaceError(errno.ENOMEM, f"out of object slots (the space holds {self.slots})")
                physical[free[0]] = handle
                struct.pack_into(">I", out, _HEADER, _VIRTUAL_TOP - free[0])
            elif _is_session(handle):
                if len(self.sessions) >= SLOTS:
                    self.chip.send(_command(CC_FLUSH_CONTEXT, struct.pack(">I", handle)))
                    raise SpaceError(errno.ENOMEM, "out of session slots (the kernel's space holds three)")
                self.sessions[handle] = None  # loaded: saved after the command
        if cc == CC_GET_CAPABILITY:
            out = self._map_handle_list(out, physical)
        return bytes(out)

    def _map_handle_list(self, out: bytearray, physical: dict[int, int]) -> bytearray:
        """TPM2_GetCapability(HANDLES) lists only this file's objects, by their virtual handles."""
        at = _HEADER + 1  # moreData
        if len(out) < at + 8 or struct.unpack(">I", out[at:at + 4])[0] != CAP_HANDLES:
            return out
        (count,) = struct.unpack(">I", out[at + 4:at + 8])
        handles = [struct.unpack(">I", out[at + 8 + 4 * i:at + 12 + 4 * i])[0] for i in range(count)]
        virtual = {p: _VIRTUAL_TOP - s for s, p in physical.items()}
        kept = [virtual[h] if _is_transient(h) else h for h in handles if not _is_transient(h) or h in virtual]
        body = out[:at + 4] + struct.pack(">I", len(kept)) + b"".join(struct.pack(">I", h) for h in kept)
        body += out[at + 8 + 4 * count:]
        struct.pack_into(">I", body, 2, len(body))
        return body

    def close(self) -> None:
        """Last close of the file: forget its objects, flush its sessions (tpm2_del_space)."""
        with self.chip.lock:
            for handle in list(self.sessions):
                try:
                    self.chip.send(_command(CC_FLUSH_CONTEXT, struct.pack(">I", handle)))
                except SpaceError:
                    break
            self.sessions.clear()
            self.objects = [None] * self.slots


class _Gone(Exception):
    """A saved context whose object or session no longer exists (the kernel's -ENOENT)."""


class Passthrough:
    """/dev/tpm0: no resource manager; the TPM's own slots and handles, one open file at a time."""

    def __init__(self, chip: Chip) -> None:
        self.chip = chip

    def run(self, command: bytes) -> bytes:
        if len(command) < _HEADER or struct.unpack(">I", command[2:6])[0] > len(command):
            raise SpaceError(errno.EINVAL, "not a whole TPM command")
        with self.chip.lock:
            return self.chip.send(command)

    def close(self) -> None:
        """Nothing: on /dev/tpm0 what a client left loaded stays in the TPM."""
