"""The /dev/tpmrm0 stand-in's file system: one FUSE file whose every open() gets its own space.

Run as its own process (libfuse's loop blocks), started and stopped by `tpmrm.TpmrmDevice`:

    python -m tpmtls.lab.tpmrm_fuse MOUNTPOINT --tpm 127.0.0.1:PORT [--name tpmrm0] [--direct]
                                    [--mode 0666] [--owner UID:GID] [--object-slots 3]

What tpm2-tss and tpmtls rely on, as the kernel's tpm-dev-common.c does it: open with
O_RDWR|O_NONBLOCK; one whole command per write (with O_NONBLOCK the command runs in the
background and write returns at once, else write waits for it); a second write before
the response was read fails EBUSY; the response is read in as many parts as the reader
likes (ESYS reads the 10-byte header first); poll reports POLLIN only once a response
(or an error) waits; the file is `direct_io` (no page cache, every read reaches us).
The last close waits for a running command and then drops the file's space. `--direct`
makes a /dev/tpm0: no resource manager, one open file at a time (EBUSY for a second).
mfusepy (ctypes over libfuse3's high-level API) is the binding: docs/tpm-device.md says why.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import itertools
import os
import select
import stat
import sys
import threading
import time
from typing import Any

import mfusepy

from .tpmrm_space import Chip, Passthrough, Space, SpaceError, TpmLink

_READY = select.POLLIN | select.POLLRDNORM
_WRITABLE = select.POLLOUT | select.POLLWRNORM

_libfuse: Any = mfusepy._libfuse
_libfuse.fuse_notify_poll.argtypes = [ctypes.c_void_p]
_libfuse.fuse_pollhandle_destroy.argtypes = [ctypes.c_void_p]


class OpenFile:
    """One open file description (shared by a process and the children it forks)."""

    def __init__(self, space: Space | Passthrough, nonblocking: bool) -> None:
        self.space = space
        self.nonblocking = nonblocking
        self.cond = threading.Condition()
        self.running = False  # a command is being executed
        self.response: bytes | None = None
        self.error = 0  # errno the next read returns, as the kernel's negative response_length
        self.offset = 0
        self.read_started = True  # the kernel's response_read: a write is allowed
        self.poll_handle: int | None = None

    def waiting(self) -> bool:
        return self.response is not None or self.error != 0

    def finish(self, response: bytes | None, error: int) -> None:
        with self.cond:
            self.response, self.error, self.offset, self.running = response, error, 0, False
            handle, self.poll_handle = self.poll_handle, None
            self.cond.notify_all()
        if handle:
            _libfuse.fuse_notify_poll(handle)
            _libfuse.fuse_pollhandle_destroy(handle)

    def execute(self, command: bytes) -> None:
        try:
            response, error = self.space.run(command), 0
        except SpaceError as e:
            response, error = None, e.errno or errno.EIO
        except Exception:  # noqa: BLE001 - any failure of ours is an I/O error for the reader
            response, error = None, errno.EIO
        self.finish(response, error)


class TpmrmFs(mfusepy.Operations):
    """A directory holding one device file, `name`."""

    use_ns = True

    def __init__(self, chip: Chip, name: str, direct: bool, mode: int, owner: tuple[int, int], slots: int = 3) -> None:
        # (no attribute may share a name with a FUSE operation: mfusepy calls those it finds)
        self._chip, self._name, self._direct, self._mode, self._owner = chip, name, direct, mode, owner
        self._slots = slots
        self._files: dict[int, OpenFile] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._started = time.time_ns()

    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        common = {"st_uid": self._owner[0], "st_gid": self._owner[1], "st_atime": self._started,
                  "st_mtime": self._started, "st_ctime": self._started}
        if path == "/":
            return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2, **common}
        if path == "/" + self._name:
            return {"st_mode": stat.S_IFREG | self._mode, "st_nlink": 1, "st_size": 0, **common}
        raise mfusepy.FuseOSError(errno.ENOENT)

    def readdir(self, path: str, fh: Any) -> list[str]:
        return [".", "..", self._name]

    def _allowed(self, flags: int) -> bool:
        """The file's mode bits for the caller, root included (so a root test sees EACCES)."""
        uid, gid, _ = mfusepy.fuse_get_context()
        shift = 6 if uid == self._owner[0] else 3 if gid == self._owner[1] else 0
        bits = (self._mode >> shift) & 0o7
        need = {os.O_RDONLY: 0o4, os.O_WRONLY: 0o2}.get(flags & os.O_ACCMODE, 0o6)
        return bits & need == need

    def open(self, path: str, fi: Any) -> int:
        if path != "/" + self._name:
            raise mfusepy.FuseOSError(errno.ENOENT)
        if not self._allowed(fi.flags):
            raise mfusepy.FuseOSError(errno.EACCES)
        with self._lock:
            if self._direct and self._files:
                raise mfusepy.FuseOSError(errno.EBUSY)  # /dev/tpm0 takes one open file
            fh = next(self._ids)
            space = Passthrough(self._chip) if self._direct else Space(self._chip, self._slots)
            self._files[fh] = OpenFile(space, bool(fi.flags & os.O_NONBLOCK))
        fi.fh = fh
        fi.direct_io = 1
        fi.nonseekable = 1
        return 0

    def _file(self, fi: Any) -> OpenFile:
        with self._lock:
            found = self._files.get(fi.fh)
        if found is None:
            raise mfusepy.FuseOSError(errno.EBADF)
        return found

    def write(self, path: str, data: bytes, offset: int, fi: Any) -> int:
        f = self._file(fi)
        with f.cond:
            if f.running or not f.read_started:
                raise mfusepy.FuseOSError(errno.EBUSY)
            f.running, f.read_started = True, False
            f.response, f.error, f.offset = None, 0, 0
        if f.nonblocking:
            threading.Thread(target=f.execute, args=(bytes(data),), daemon=True).start()
        else:
            f.execute(bytes(data))
        return len(data)

    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        f = self._file(fi)
        with f.cond:
            while f.running:  # the kernel's read waits on the buffer mutex the command holds
                f.cond.wait(1.0)
            if f.error:
                error, f.error = f.error, 0
                f.read_started = True
                raise mfusepy.FuseOSError(error)
            if f.response is None:
                return b""
            f.read_started = True
            chunk = f.response[f.offset:f.offset + size]
            f.offset += len(chunk)
            if f.offset >= len(f.response):
                f.response, f.offset = None, 0
            return chunk

    def poll(self, path: str, fi: Any, ph: Any, reventsp: Any) -> int:
        f = self._file(fi)
        handle = ph if isinstance(ph, int) else getattr(ph, "value", None)
        with f.cond:
            ready = f.waiting()
            if handle and not ready:
                old, f.poll_handle = f.poll_handle, handle
                handle = old  # a superseded handle is destroyed below
        if handle:
            _libfuse.fuse_pollhandle_destroy(handle)
        reventsp[0] = _READY if ready else _WRITABLE
        return 0

    def flush(self, path: str, fi: Any) -> int:
        return 0

    def release(self, path: str, fi: Any) -> int:
        with self._lock:
            f = self._files.pop(fi.fh, None)
        if f is None:
            return 0
        with f.cond:
            while f.running:  # the kernel's release waits for the running command (flush_work)
                f.cond.wait(1.0)
            handle, f.poll_handle = f.poll_handle, None
        if handle:
            _libfuse.fuse_pollhandle_destroy(handle)
        f.space.close()
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tpmtls.lab.tpmrm_fuse", description=__doc__.splitlines()[0])
    parser.add_argument("mountpoint")
    parser.add_argument("--tpm", required=True, help="HOST:PORT of swtpm's TPM port (or the latency forwarder's)")
    parser.add_argument("--name", default="tpmrm0")
    parser.add_argument("--direct", action="store_true", help="a /dev/tpm0: no resource manager, one open at a time")
    parser.add_argument("--mode", default="0666", help="the file's mode bits (octal)")
    parser.add_argument("--owner", default=f"{os.getuid()}:{os.getgid()}", help="UID:GID of the file")
    parser.add_argument("--object-slots", type=int, default=3,
                        help="objects per open file (the kernel: 3; fewer models a TPM with more slots than that)")
    args = parser.parse_args(argv)
    host, _, port = args.tpm.rpartition(":")
    uid, gid = (int(x) for x in args.owner.split(":"))
    fs = TpmrmFs(Chip(TpmLink(host, int(port))), args.name, args.direct, int(args.mode, 8), (uid, gid),
                 args.object_slots)
    # Each reader blocked on a running command holds a libfuse worker thread (10 by default);
    # the kernel has no such limit, so allow as many as a test or benchmark has clients.
    options: dict[str, Any] = {"foreground": True, "fsname": "tpmtls-tpmrm", "raw_fi": True, "max_threads": 128}
    if os.getuid() == 0:
        options["allow_other"] = True  # other users reach it (and meet its mode bits)
    print(f"serving {args.mountpoint}/{args.name}", flush=True)
    mfusepy.FUSE(fs, args.mountpoint, **options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
