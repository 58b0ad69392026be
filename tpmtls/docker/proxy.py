"""`tpmtls daemon-proxy`: a local Docker API socket for the stock docker CLI, forwarded over
TPM-backed mutual TLS to a `dockerd --tlsverify` (or the NGINX front of one).

Bytes are forwarded as they are, so hijacked connections (attach, exec, `run -it`) work,
including half-closes: the CLI's end of stdin becomes a TLS close_notify upstream while
output keeps flowing back. Each connection runs in its own thread on one TLS object over
memory BIOs (`_stream.py`), so reads and writes never race inside OpenSSL. Upstream TLS
sessions are resumed: after the first handshake a new CLI call costs no TPM signature.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import ssl
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from .._callers import foreign_caller
from .._systemd import LISTEN_FD, passed_local_socket
from ..errors import TpmtlsError, UsageError
from ..tls.diagnosis import diagnose_response
from ._stream import CHUNK, TlsStream, pump
from .client import DaemonError, explain_tls_failure
from .config import parse_host
from .files import CertPath

CONNECT_TIMEOUT = 10.0
#: Concurrent connections served; more wait in the listen backlog.
MAX_CONNECTIONS = 64
HEAD_TIMEOUT = 10.0  # for the first request's head on a TCP listen (checked before forwarding)
MAX_HEAD = 16384


def parse_listen(listen: str) -> tuple[str, str | tuple[str, int]]:
    """`unix:///path`, `tcp://127.0.0.1:PORT` (loopback only) or `fd://` (systemd's socket) → (family, address)."""
    if listen == LISTEN_FD:
        return "fd", listen
    if listen.startswith("unix://"):
        kind, path, _ = parse_host(listen)
        return "unix", path
    text = listen if "://" in listen else f"tcp://{listen}"
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "tcp" or not parts.hostname or port is None:
        raise UsageError(f"{listen!r}: listen on unix:///path or tcp://127.0.0.1:PORT")
    host = parts.hostname
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise UsageError(f"refusing to listen on {listen}: anyone reaching it would act with your TPM identity; "
                         "use a unix socket or a loopback address (127.0.0.1, ::1)")
    return "tcp", ("127.0.0.1" if host == "localhost" else host, port)


def _bind_unix(path: str) -> socket.socket:
    p = Path(path)
    if not p.parent.is_dir():
        try:
            p.parent.mkdir(mode=0o755, parents=True)
        except OSError as e:
            raise UsageError(f"{p.parent}: cannot create the socket's directory: {e.strerror}") from None
    if p.exists() or p.is_symlink():
        if not stat.S_ISSOCK(p.lstat().st_mode):
            raise UsageError(f"{p}: exists and is not a socket; remove it or choose another --listen")
        probe = socket.socket(socket.AF_UNIX)
        probe.settimeout(1)
        try:
            probe.connect(str(p))
            raise UsageError(f"{p}: another process is serving this socket; stop it or choose another --listen")
        except OSError:
            p.unlink()  # stale socket of a proxy that did not stop cleanly
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX)
    old = os.umask(0o117)  # born 0660: no moment where others could connect
    try:
        sock.bind(str(p))
    except OSError as e:
        sock.close()
        raise UsageError(f"{p}: cannot listen here: {e.strerror}") from None
    finally:
        os.umask(old)
    os.chmod(p, 0o660)
    return sock


@dataclass
class ProxyStats:
    """Counters for the log and the benchmark."""

    connections: int = 0
    active: int = 0
    failures: int = 0
    resumed: int = 0
    full_handshakes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **amounts: int) -> None:
        with self.lock:
            for k, v in amounts.items():
                setattr(self, k, getattr(self, k) + v)


class DaemonProxy:
    """Accepts local connections and forwards each over its own upstream TLS connection."""

    def __init__(self, upstream: str, listen: str, cert_path: CertPath, *, tcti: str | None = None,
                 password: bytes | str | None = None, resume: bool = True,
                 log: Callable[[str], None] | None = None) -> None:
        if upstream.startswith("https://"):
            upstream = "tcp://" + upstream[len("https://"):]
        kind, host, port = parse_host(upstream)
        if kind != "tcp":
            raise UsageError(f"{upstream}: the upstream is a TLS daemon, tcp://HOST:PORT")
        self.upstream, self.host, self.port = upstream, host, int(port or 0)
        self.family, self.address = parse_listen(listen)
        self.listen = listen
        self.cert_path = cert_path.check_files()
        self.tcti, self.resume = tcti, resume
        self.log = log or (lambda line: None)
        self.stats = ProxyStats()
        from ..tls import ssl_context

        self.context = ssl_context(cert_path.cert, str(cert_path.key), cert_path.ca, password=password, tcti=tcti,
                                   resume=resume)
        self._session: ssl.SSLSession | None = None
        self._session_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: set[threading.Thread] = set()
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._listener: socket.socket | None = None
        self._passed = False  # the listener came from systemd (--listen fd://)
        # Forward a client's half-close (end of stdin) as a TLS close_notify? dockerd reads it as
        # EOF on the container's stdin; NGINX ends the whole upgraded stream on it (its
        # ngx_http_upstream_process_upgraded), losing the output, so not to NGINX. Set by probe().
        self.half_close = True

    # ---- upstream ------------------------------------------------------------------------

    def signatures(self) -> int:
        """TPM signatures made by this process so far (the pool's counter)."""
        from ..tpm.pool import default_pool

        return default_pool(self.tcti).stats().signatures

    def _open_upstream(self) -> "TlsStream":
        try:
            raw = socket.create_connection((self.host, self.port), timeout=CONNECT_TIMEOUT)
            # Small records (a resumed handshake's Finished, then the request) must not wait for
            # delayed ACKs: Nagle cost 40 ms per resumed connection (measured).
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as e:
            reason = e.strerror or str(e)
            raise DaemonError(f"{self.upstream}: cannot connect ({reason}): is dockerd (or its NGINX front) "
                              "listening there?") from None
        with self._session_lock:
            session = self._session if self.resume else None
        tls = TlsStream(raw, self.context, self.host, session)
        try:
            tls.handshake()
        except (ssl.SSLError, OSError) as e:
            raw.close()
            raise explain_tls_failure(e, self.upstream, self.cert_path) from None
        self.stats.add(resumed=int(tls.obj.session_reused), full_handshakes=int(not tls.obj.session_reused))
        return tls

    def _remember(self, tls: "TlsStream") -> None:
        session = tls.obj.session
        if self.resume and session is not None and (session.has_ticket or tls.obj.version() != "TLSv1.3"):
            with self._session_lock:
                self._session = session

    def probe(self) -> str:
        """GET /_ping upstream: the configuration works (CA, our certificate, the host) or one clear error."""
        tls = self._open_upstream()
        try:
            tls.raw.settimeout(CONNECT_TIMEOUT)
            reply = tls.request(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
        except (ssl.SSLError, OSError) as e:
            raise explain_tls_failure(e, self.upstream, self.cert_path) from None
        finally:
            tls.close()
        self._remember(tls)
        head = reply.split(b"\r\n\r\n", 1)[0].decode(errors="replace").split("\r\n")
        status = head[0]
        server = next((h.split(":", 1)[1].strip() for h in head[1:] if h.lower().startswith("server:")), "")
        self.half_close = server.startswith("Docker/")
        if " 200 " not in status + " ":
            if " 400 " in status and diagnose_response(400, reply.split(b"\r\n\r\n", 1)[-1]) is not None:
                raise explain_tls_failure(Exception(reply.decode(errors="replace")), self.upstream, self.cert_path)
            raise DaemonError(f"{self.upstream}: answered {status!r} to /_ping: not a Docker daemon?")
        return status

    # ---- serving -------------------------------------------------------------------------

    def bind(self) -> None:
        if self.family == "fd":  # systemd made and owns it: a unix socket (SocketMode=) or loopback TCP
            sock = passed_local_socket("tpmtls daemon-proxy --listen fd://", allow_unix=True)
            self._passed = True
            if sock.family == socket.AF_UNIX:
                self.family, self.address = "unix", str(sock.getsockname())
            else:
                self.family, self.address = "tcp", tuple(sock.getsockname()[:2])  # type: ignore[assignment]
        elif self.family == "unix":
            assert isinstance(self.address, str)
            sock = _bind_unix(self.address)
        else:
            assert isinstance(self.address, tuple)
            host, port = self.address
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as e:
                sock.close()
                raise UsageError(f"{self.listen}: cannot listen here: {e.strerror}") from None
        sock.listen(128)
        sock.settimeout(0.5)
        self._listener = sock

    @property
    def bound(self) -> str:
        """Where clients connect: unix:///path or tcp://127.0.0.1:PORT (the real port if 0 was asked)."""
        if self.family == "unix":
            return f"unix://{self.address}"
        assert self._listener is not None
        host, port = self._listener.getsockname()[:2]
        return f"tcp://{host}:{port}"

    def serve(self) -> None:
        """Accept until `stop()`; then wait (bounded) for open connections."""
        if self._listener is None:
            self.bind()
        assert self._listener is not None
        try:
            while not self._stop.is_set():
                if not self._slots.acquire(timeout=0.5):
                    continue
                try:
                    client, _ = self._listener.accept()
                except (socket.timeout, TimeoutError):
                    self._slots.release()
                    continue
                except OSError:
                    self._slots.release()
                    if self._stop.is_set():
                        break
                    raise
                if self.family == "tcp":
                    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                t = threading.Thread(target=self._serve_one, args=(client,), daemon=True)
                self._threads.add(t)
                t.start()
        finally:
            self._close_listener()
            deadline = time.monotonic() + 5
            for t in list(self._threads):
                t.join(max(0.0, deadline - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()

    def _close_listener(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            if self.family == "unix" and not self._passed:  # systemd's socket file stays systemd's
                try:
                    os.unlink(str(self.address))
                except FileNotFoundError:
                    pass

    def _serve_one(self, client: socket.socket) -> None:
        self.stats.add(connections=1, active=1)
        number = self.stats.connections
        started = time.monotonic()
        up = down = 0
        how = "-"
        try:
            if self.family == "tcp":  # a unix socket is guarded by its file mode; a port by this check
                refused = _foreign_request(client)
                if refused:
                    _refuse(client, refused, b"403 Forbidden")
                    self.log(f"conn {number}: refused: {refused}")
                    return
            try:
                tls = self._open_upstream()
            except TpmtlsError as e:
                self.stats.add(failures=1)
                _refuse(client, str(e))
                self.log(f"conn {number}: refused upstream: {e}")
                return
            how = "resumed" if tls.obj.session_reused else "full handshake"
            try:
                up, down, error = pump(client, tls, self._stop, lambda: self._remember(tls), self.half_close)
            finally:
                tls.close()
            self._remember(tls)
            if error and down == 0:
                problem = explain_tls_failure(error, self.upstream, self.cert_path)
                _refuse(client, str(problem), read_head=up == 0)
                self.stats.add(failures=1)
                self.log(f"conn {number}: {problem}")
                return
            self.log(f"conn {number}: {how}, {up} B up, {down} B down, {time.monotonic() - started:.2f} s"
                     f"{', ' + _reason(error) if error else ''}; TPM signatures so far: {self.signatures()}")
        finally:
            client.close()
            self.stats.add(active=-1)
            self._threads.discard(threading.current_thread())
            self._slots.release()


def _foreign_request(client: socket.socket) -> str | None:
    """Peek at the first request's head (not consuming it): why it must not be forwarded, or None."""
    import email.parser

    head = b""
    client.settimeout(HEAD_TIMEOUT)
    try:
        for _ in range(64):  # bounded: a head arrives in a few reads
            head = client.recv(MAX_HEAD, socket.MSG_PEEK)
            if b"\r\n\r\n" in head or len(head) >= MAX_HEAD or not head:
                break
            time.sleep(0.01)
    except OSError:
        return None  # nothing readable: the forwarding sees the same and ends the connection
    finally:
        client.settimeout(None)
    lines = head.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
    headers = email.parser.BytesHeaderParser().parsebytes(b"\r\n".join(lines) + b"\r\n\r\n")
    return foreign_caller(headers)


def _reason(error: BaseException | None) -> str:
    return f"ended by {type(error).__name__}: {str(error)[:120]}" if error else ""


def _refuse(client: socket.socket, message: str, status: bytes = b"502 Bad Gateway", read_head: bool = True) -> None:
    """Tell the docker CLI why, as a daemon would: it prints 'Error response from daemon: …'.

    `read_head`: the request head is still unread (answering before it arrives confuses
    some clients); False once the forwarding has consumed it."""
    body = json.dumps({"message": f"tpmtls daemon-proxy: {message}"}).encode()
    try:
        client.settimeout(2)
        if read_head:
            try:
                client.recv(CHUNK)
            except OSError:
                pass
        client.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nConnection: close\r\n"
                       b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    except OSError:
        pass


__all__ = ["DaemonProxy", "ProxyStats", "parse_listen"]
