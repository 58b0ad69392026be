"""`tpmtls daemon-proxy`: a local Docker API socket for the stock docker CLI, forwarded over
TPM-backed mutual TLS to a `dockerd --tlsverify` (or the NGINX front of one).

Every request is read whole and, on a TCP port, checked (a web page must not reach the daemon)
before it goes on; after an upgrade, bytes pass as they are, so hijacked connections (attach,
exec, `run -it`) work, including half-closes: the CLI's end of stdin becomes a TLS
close_notify upstream while output keeps flowing back (tpmtls/docker/_relay.py). A connection
ends when its client is done with it, idle ones make room for new ones, and upstream TLS
sessions are resumed: after the first handshake a new CLI call costs no TPM signature.
"""

from __future__ import annotations

import ipaddress
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
from ..errors import HandshakeError, UsageError
from ..tls.diagnosis import diagnose_response
from ._relay import HEAD_TIMEOUT, IDLE_TIMEOUT, Relay
from ._stream import TlsStream
from .client import DaemonError, explain_tls_failure
from .config import parse_host
from .files import CertPath

CONNECT_TIMEOUT = 10.0
#: Client connections served at once. When all are taken, the one idle longest (waiting for a
#: request) is closed for a new one; if none is idle, new ones wait in the listen backlog.
MAX_CONNECTIONS = 128


def parse_listen(listen: str) -> tuple[str, str | tuple[str, int]]:
    """`unix:///path`, `tcp://127.0.0.1:PORT` (loopback only) or `fd://` (systemd's socket) → (family, address)."""
    if listen == LISTEN_FD:
        return "fd", listen
    if listen.startswith("unix://"):
        kind, path, _ = parse_host(listen)
        return "unix", path
    if listen.isdigit():
        raise UsageError(f"--listen {listen}: a port alone says nothing of where; write tcp://127.0.0.1:{listen} "
                         "(loopback only) or unix:///run/tpmtls/docker.sock")
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
                 log: Callable[[str], None] | None = None, head_timeout: float = HEAD_TIMEOUT,
                 idle_timeout: float = IDLE_TIMEOUT, max_connections: int = MAX_CONNECTIONS) -> None:
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
        self.head_timeout, self.idle_timeout = head_timeout, idle_timeout
        from ..tls import ssl_context
        from ..tls.diagnosis import own_certificate_problem
        from ..tls.renewed import Renewable

        renew = own_certificate_problem(cert_path.cert)
        if renew is not None:  # before the daemon is blamed for refusing it
            raise HandshakeError(f"{upstream}: our client certificate {renew}")
        self._session: ssl.SSLSession | None = None
        self._session_lock = threading.Lock()

        def context() -> ssl.SSLContext:
            return ssl_context(cert_path.cert, str(cert_path.key), cert_path.ca, password=password, tcti=tcti,
                               resume=resume)

        def renewed(old: ssl.SSLContext) -> None:
            with self._session_lock:
                self._session = None  # a session of the old certificate would present it again
            self.log(f"{cert_path.cert} changed on disk (renewed): new upstream connections use it")

        self._context = Renewable((cert_path.cert, cert_path.key), context, renewed)
        self._stop = threading.Event()
        self._threads: set[threading.Thread] = set()
        self._slots = threading.BoundedSemaphore(max_connections)
        self._relays: set[Relay] = set()
        self._relays_lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._passed = False  # the listener came from systemd (--listen fd://)
        # Forward a client's half-close (end of stdin) as a TLS close_notify? dockerd reads it as
        # EOF on the container's stdin; NGINX ends the whole upgraded stream on it (its
        # ngx_http_upstream_process_upgraded), losing the output, so not to NGINX. Set by probe().
        self.half_close = True

    # ---- upstream ------------------------------------------------------------------------

    @property
    def context(self) -> ssl.SSLContext:
        """The upstream TLS context, over the client certificate as it is on disk now."""
        return self._context.get()

    def signatures(self) -> int:
        """TPM signatures made by this process so far (the pool's counter)."""
        from ..tpm.pool import default_pool

        return default_pool(self.tcti).stats().signatures

    def _open_upstream(self) -> TlsStream:
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

    def _remember(self, tls: TlsStream) -> None:
        session = tls.obj.session
        if self.resume and session is not None and (session.has_ticket or tls.obj.version() != "TLSv1.3"):
            with self._session_lock:
                self._session = session

    def _explain(self, error: BaseException) -> str:
        return str(explain_tls_failure(error, self.upstream, self.cert_path))

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
        return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"

    def serve(self) -> None:
        """Accept until `stop()`; then wait (bounded) for open connections."""
        if self._listener is None:
            self.bind()
        assert self._listener is not None
        try:
            while not self._stop.is_set():
                try:
                    client, peer = self._listener.accept()
                except (socket.timeout, TimeoutError):
                    continue
                except OSError:
                    if self._stop.is_set():
                        break
                    raise
                if not self._take_slot():
                    client.close()
                    break
                if self.family == "tcp":
                    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                t = threading.Thread(target=self._serve_one, args=(client, peer), daemon=True)
                self._threads.add(t)
                t.start()
        finally:
            self._close_listener()
            deadline = time.monotonic() + 5
            for t in list(self._threads):
                t.join(max(0.0, deadline - time.monotonic()))

    def _take_slot(self) -> bool:
        """A slot for a new connection: a free one, or one an idle connection gives up (False: stopping)."""
        if self._slots.acquire(blocking=False):
            return True
        for _ in range(1_000_000):  # bounded; each round waits up to 0.5 s for a slot
            with self._relays_lock:
                idle = [(since, r) for r in self._relays if (since := r.idle_since()) is not None]
            for _since, relay in sorted(idle, key=lambda x: x[0]):
                if relay.evict():
                    break
            if self._slots.acquire(timeout=0.5):
                return True
            if self._stop.is_set():
                return False
        return False

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        """Give up the listening socket (and a unix socket's file) without serving."""
        self._close_listener()

    def _close_listener(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            if self.family == "unix" and not self._passed:  # systemd's socket file stays systemd's
                try:
                    os.unlink(str(self.address))
                except FileNotFoundError:
                    pass

    def _serve_one(self, client: socket.socket, peer: object) -> None:
        self.stats.add(connections=1, active=1)
        number = self.stats.connections
        started = time.monotonic()
        # a unix socket is guarded by its file mode; a port by checking every request's caller
        check = foreign_caller if self.family == "tcp" else None
        relay = Relay(client, peer, open_upstream=self._open_upstream, explain=self._explain, check=check,
                      stop=self._stop, on_first_reply=self._remember, half_close=self.half_close,
                      head_timeout=self.head_timeout, idle_timeout=self.idle_timeout)
        with self._relays_lock:
            self._relays.add(relay)
        try:
            out = relay.run()
            if out.failed:
                self.stats.add(failures=1)
            how = "-" if out.resumed is None else ("resumed" if out.resumed else "full handshake")
            refused = f"; refused: {out.refused}" if out.refused else ""
            self.log(f"conn {number}: {how}, {out.requests} request{'' if out.requests == 1 else 's'}, "
                     f"{out.up} B up, {out.down} B down, {time.monotonic() - started:.2f} s, {out.ended}{refused}; "
                     f"TPM signatures so far: {self.signatures()}")
        finally:
            with self._relays_lock:
                self._relays.discard(relay)
            client.close()
            self.stats.add(active=-1)
            self._threads.discard(threading.current_thread())
            self._slots.release()


__all__ = ["DaemonProxy", "ProxyStats", "parse_listen"]
