"""A software TPM with a hardware TPM's pace: a forwarder that delays each TPM response.

swtpm answers a TPM2_Sign in 1–2 ms; discrete TPMs take tens to hundreds of
milliseconds, and that is what users of real TPMs meet. `LatencyForwarder` sits
between the TPM's clients (tpm2-abrmd, or a direct swtpm TCTI) and swtpm: it listens on
a data port and the control port right after it (the swtpm TCTI's layout), reads the
command code from each command's 10-byte header (TPM 2.0 Part 1, 18.2: tag, size, code),
lets swtpm execute it, and holds the response until the command's modelled duration has
passed. Commands are executed one at a time, as a TPM does. The control channel
(power, locality) is passed through untouched.

Default durations follow published figures for discrete TPMs (wolfTPM's README; see
docs/facts-tpm.md, "Hardware TPMs"): ECDSA P-256 signing at 14.5–23.6/s (≈ 42–69 ms; default 50 ms), RSA-2048
private operations at 4–8.5/s (≈ 120–250 ms; RSA_Decrypt 120 ms). Key creation under a
primary is slow on every TPM (ECC key generation ≈ 150 ms; RSA takes seconds and is not
modelled per algorithm: the command code alone does not say which); other commands a few
milliseconds (5 ms). Pass your own `durations` to model a specific part.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

# TPM 2.0 Part 2, 6.5.2 (TPM_CC)
CC_NAMES = {
    0x120: "EvictControl", 0x131: "CreatePrimary", 0x147: "ActivateCredential", 0x148: "Certify",
    0x153: "Create", 0x156: "Import", 0x157: "Load", 0x158: "Quote", 0x159: "RSA_Decrypt",
    0x15D: "Sign", 0x161: "ContextLoad", 0x162: "ContextSave", 0x165: "FlushContext",
    0x173: "ReadPublic", 0x176: "StartAuthSession", 0x17A: "GetCapability", 0x17B: "GetRandom",
    0x191: "CreateLoaded",
}
_BY_NAME = {name: cc for cc, name in CC_NAMES.items()}

DEFAULT_DURATIONS = {
    "Sign": 0.050, "RSA_Decrypt": 0.120, "Certify": 0.050, "Quote": 0.050,
    "Create": 0.150, "CreatePrimary": 0.150, "CreateLoaded": 0.150, "Import": 0.050,
    "Load": 0.020, "ActivateCredential": 0.050,
}
DEFAULT_OTHER = 0.005
_HEADER = 10
_MAX_COMMAND = 1 << 16  # TPM commands are at most a few KB (TPM_PT_MAX_COMMAND_SIZE)
_SEND_COMMAND = 8  # TPM_SEND_COMMAND of the simulator protocol


@dataclass
class TpmTiming:
    """How long each TPM command takes, in seconds, by command name (see CC_NAMES)."""

    durations: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_DURATIONS))
    other: float = DEFAULT_OTHER

    @classmethod
    def with_sign(cls, sign_ms: float) -> TpmTiming:
        """The defaults, with TPM2_Sign taking `sign_ms` milliseconds (`--tpm-latency` in the benchmarks)."""
        timing = cls()
        timing.durations["Sign"] = sign_ms / 1000
        return timing

    def duration(self, cc: int) -> float:
        return self.durations.get(CC_NAMES.get(cc, ""), self.other)


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def _recv_raw(sock: socket.socket, first: bytes) -> tuple[int, bytes] | None:
    """The rest of a bare TPM command or response whose first 4 bytes were read: (code, bytes)."""
    more = _recv_exact(sock, _HEADER - 4)
    if more is None:
        return None
    header = first + more
    _, size, code = struct.unpack(">HII", header)
    if not _HEADER <= size <= _MAX_COMMAND:
        raise ValueError(f"not a TPM message (size {size})")
    rest = _recv_exact(sock, size - _HEADER) if size > _HEADER else b""
    return None if rest is None else (code, header + rest)


def _sized(sock: socket.socket) -> bytes | None:
    """A 4-byte big-endian length and that many bytes (the simulator protocol's framing)."""
    head = _recv_exact(sock, 4)
    if head is None:
        return None
    (size,) = struct.unpack(">I", head)
    if size > _MAX_COMMAND:
        raise ValueError(f"not a TPM message (size {size})")
    body = _recv_exact(sock, size)
    return None if body is None else head + body


def _read_command(client: socket.socket) -> tuple[int, bytes, bool] | None:
    """One command from a client: (command code, bytes to relay, framed by the simulator protocol).

    swtpm's data socket takes bare TPM commands (libtss2-tcti-swtpm) or the simulator
    protocol (TPM_SEND_COMMAND, locality, size, command; answered with size, response and
    a 4-byte acknowledgement), which tpmtls's own transport speaks. Both are relayed as
    they came; the command code is read either way.
    """
    first = _recv_exact(client, 4)
    if first is None:
        return None
    if struct.unpack(">I", first)[0] == _SEND_COMMAND:
        locality = _recv_exact(client, 1)
        command = _sized(client)
        if locality is None or command is None or len(command) < 4 + _HEADER:
            return None
        return struct.unpack(">I", command[4 + 6:4 + _HEADER])[0], first + locality + command, True
    message = _recv_raw(client, first)
    return None if message is None else (message[0], message[1], False)


def _run(upstream: socket.socket, data: bytes, framed: bool) -> bytes | None:
    """Send one command to swtpm and read its whole response, in the same framing."""
    upstream.sendall(data)
    if framed:
        response, ack = _sized(upstream), _recv_exact(upstream, 4)
        return None if response is None or ack is None else response + ack
    head = _recv_exact(upstream, 4)
    reply = None if head is None else _recv_raw(upstream, head)
    return None if reply is None else reply[1]


def _shut(sock: socket.socket) -> None:
    """Close for good: shutdown() first, or a thread blocked in recv() keeps the connection up."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class LatencyForwarder:
    """Listens on 127.0.0.1:`port` (data) and `port`+1 (control), forwarding to swtpm at `upstream_port`.

    Thread-based and bounded: accept loops poll a stop flag every 0.2 s, every socket has
    a timeout, and `stop()` closes everything. `counts` tells how many of each command
    went through (TPM2_Sign included), `delayed` how many seconds were added.
    """

    def __init__(self, upstream_port: int, port: int, timing: TpmTiming | None = None) -> None:
        self.upstream_port = upstream_port
        self.port = port
        self.timing = timing or TpmTiming()
        self.counts: Counter[str] = Counter()
        self.delayed = 0.0
        self.busy = 0.0  # seconds the TPM spent on commands (modelled), for utilisation
        self._tpm = threading.Lock()  # one command at a time, as in a TPM
        self._stats = threading.Lock()
        self._stop = threading.Event()
        self._listeners: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._open: set[socket.socket] = set()

    def start(self) -> LatencyForwarder:
        for offset, handler in ((0, self._serve_data), (1, self._serve_control)):
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port + offset))
            listener.listen(16)
            listener.settimeout(0.2)
            self._listeners.append(listener)
            self._spawn(self._accept_loop, listener, offset, handler)
        return self

    def stop(self) -> None:
        self._stop.set()
        for sock in [*self._listeners, *list(self._open)]:
            _shut(sock)
        for thread in self._threads:
            thread.join(5)

    def __enter__(self) -> LatencyForwarder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def signatures(self) -> int:
        with self._stats:
            return self.counts["Sign"]

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self, listener: socket.socket, offset: int, handler: object) -> None:
        while not self._stop.is_set():
            try:
                client, _ = listener.accept()
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port + offset), timeout=30)
            except OSError:
                client.close()
                continue
            for sock in (client, upstream):
                sock.settimeout(300)  # an idle resource manager keeps its connection open
                self._open.add(sock)
            self._spawn(handler, client, upstream)

    def _close(self, *socks: socket.socket) -> None:
        for sock in socks:
            self._open.discard(sock)
            _shut(sock)

    def _serve_data(self, client: socket.socket, upstream: socket.socket) -> None:
        try:
            while not self._stop.is_set():
                command = _read_command(client)  # idle clients wait here, not holding the TPM
                if command is None:
                    return
                cc, data, framed = command
                with self._tpm:
                    started = time.monotonic()
                    response = _run(upstream, data, framed)
                    if response is None:
                        return
                    pause = self.timing.duration(cc) - (time.monotonic() - started)
                    if pause > 0:
                        time.sleep(pause)
                took = time.monotonic() - started
                with self._stats:
                    self.counts[CC_NAMES.get(cc, hex(cc))] += 1
                    self.delayed += max(pause, 0.0)
                    self.busy += took
                client.sendall(response)
        except (OSError, ValueError):
            return
        finally:
            self._close(client, upstream)

    def _serve_control(self, client: socket.socket, upstream: socket.socket) -> None:
        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while not self._stop.is_set():
                    data = src.recv(65536)
                    if not data:
                        return
                    dst.sendall(data)
            except OSError:
                return
            finally:
                self._close(src, dst)

        self._spawn(pump, upstream, client)
        pump(client, upstream)
