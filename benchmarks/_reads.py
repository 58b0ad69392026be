"""What a push read, counted from outside the process: its system calls under strace.

A warm re-push should read no layer bytes. The count comes from the kernel's side, not
from tpmtls's own bookkeeping, and works the same for skopeo (Go): every read/pread of
the image file is placed at its file offset (opens, seeks and closes are followed per
file descriptor) and what falls inside a layer's data in the tar is summed; for a daemon
image, the bytes read from the Docker socket are summed and `docker save` requests
(`GET …/images/…/get`) counted.
"""

from __future__ import annotations

import re
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

_LINE = re.compile(r"^(\d+)\s+(.*)$")
_CALL = re.compile(r"^(\w+)\((.*)\)\s+=\s+(-?\d+|\?)")
_UNFINISHED = re.compile(r"^(\w+)\((.*) <unfinished \.\.\.>$")
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)\)\s+=\s+(-?\d+|\?)")
_SAVE = re.compile(r"images/(?:[^ \"?]*/)?get")  # docker-py: /images/NAME/get; Go: /images/get?names=
SYSCALLS = "openat,close,read,pread64,readv,preadv,recvfrom,recvmsg,lseek,connect,write,sendto,sendmsg,dup,dup2,dup3,fcntl"


@dataclass
class Reads:
    """What one traced run read."""

    layer_bytes: int = 0  # bytes read from inside layer data of the image file
    image_bytes: int = 0  # bytes read from the image file in all (headers, config, manifest included)
    socket_bytes: int = 0  # bytes read from the Docker socket
    save_requests: int = 0  # `docker save` requests sent to the daemon
    notes: list[str] = field(default_factory=list)


def layer_ranges(archive: Path) -> list[tuple[int, int]]:
    """[start, end) of every layer's data in a docker-archive tar (`*/layer.tar` or OCI blobs but the small JSON)."""
    ranges = []
    with tarfile.open(archive) as tar:
        for m in tar.getmembers():
            if m.isfile() and (m.name.endswith("/layer.tar") or (m.name.startswith("blobs/") and m.size > 1 << 16)):
                ranges.append((m.offset_data, m.offset_data + m.size))
    return ranges


def count(argv: list[str], env: dict[str, str], image: Path | None = None, docker_socket: str | None = None,
          timeout: float = 900) -> Reads:
    """Run `argv` under `strace -f` and count what it read (see the module docstring)."""
    ranges = layer_ranges(image) if image is not None and image.is_file() else []
    with tempfile.TemporaryDirectory(prefix="tpmtls-strace-") as tmp:
        log = Path(tmp) / "trace"
        proc = subprocess.run(["strace", "-f", "-qq", "-s", "96", "-e", f"trace={SYSCALLS}", "-o", str(log), *argv],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout)
        reads = parse(log.read_text(errors="replace"), str(image) if image else None, ranges, docker_socket)
    if proc.returncode != 0:
        reads.notes.append(f"exit {proc.returncode}: {proc.stderr.decode(errors='replace').strip()[-200:]}")
    return reads


def parse(trace: str, image: str | None, ranges: list[tuple[int, int]], docker_socket: str | None) -> Reads:
    """Sum a strace log (one line per call, `-f` PIDs first). File descriptors are shared by a
    process's threads, so one table serves every PID of the traced process tree."""
    reads = Reads()
    fds: dict[int, str] = {}  # fd → "image" | "docker"
    pos: dict[int, int] = {}
    pending: dict[str, tuple[str, str]] = {}  # pid → (syscall, args) of an unfinished call
    for raw in trace.splitlines():
        m = _LINE.match(raw)
        if not m:
            continue
        pid, rest = m.groups()
        u = _UNFINISHED.match(rest)
        if u:
            pending[pid] = (u.group(1), u.group(2))
            continue
        r = _RESUMED.match(rest)
        if r:
            name, args = pending.pop(pid, (r.group(1), ""))
            tail, ret = r.group(2), r.group(3)
            args = args + tail
        else:
            c = _CALL.match(rest)
            if not c:
                continue
            name, args, ret = c.groups()
        if ret == "?":
            continue
        value = int(ret)
        first = args.split(",", 1)[0].strip()
        if name == "openat":
            if value >= 0 and image is not None and f'"{image}"' in args:
                fds[value], pos[value] = "image", 0
            elif value >= 0:
                fds.pop(value, None)
        elif name == "connect":
            if value == 0 and docker_socket and docker_socket in args and first.isdigit():
                fds[int(first)] = "docker"
        elif name in ("dup", "dup2", "dup3") or (name == "fcntl" and "F_DUPFD" in args):
            if value >= 0 and first.isdigit() and int(first) in fds:
                fds[value], pos[value] = fds[int(first)], pos.get(int(first), 0)
        elif name == "close" and first.isdigit():
            fds.pop(int(first), None)
            pos.pop(int(first), None)
        elif not first.isdigit():
            continue
        else:
            fd = int(first)
            kind = fds.get(fd)
            if kind is None:
                continue
            if name == "lseek" and value >= 0:
                pos[fd] = value
            elif name in ("read", "readv", "pread64", "preadv", "recvfrom", "recvmsg") and value > 0:
                if kind == "docker":
                    reads.socket_bytes += value
                    continue
                if name in ("pread64", "preadv"):
                    start = int(args.rsplit(",", 1)[1].strip())
                else:
                    start = pos.get(fd, 0)
                    pos[fd] = start + value
                reads.image_bytes += value
                reads.layer_bytes += sum(max(0, min(end, start + value) - max(lo, start)) for lo, end in ranges)
            elif name in ("write", "sendto", "sendmsg") and kind == "docker" and _SAVE.search(args):
                reads.save_requests += 1
    return reads


__all__ = ["Reads", "count", "layer_ranges", "parse"]
