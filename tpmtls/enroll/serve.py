"""The enroll-server's HTTPS front: bounded connections, per-request deadlines, per-client rates.

One asyncio loop accepts, counts, shakes hands and reads requests; only a *complete* request
goes to a small pool of worker threads (the handler verifies signatures and talks to the
database, which blocks). So a peer that trickles bytes costs a socket until its deadline,
never a thread; connections are capped in total and per client address before any TLS work;
each client gets a request rate and then 429 with Retry-After. h11 parses HTTP/1.1 (sans-IO,
python-hyper's, the parser httpx and hypercorn use), which leaves every wait ours to bound.
docs/enrollment-server.md gives the numbers and why.
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
import signal
import socket
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import h11

from ..errors import UsageError
from .attest_errors import ACME_ERROR_PREFIX, EnrollError
from .ratelimit import Buckets, Rate
from .server_cert import SERVER_CERT_DAYS, ServerCertificate, parse_public_url


@dataclass
class Request:
    """A complete HTTP request as the handler sees it (header names lower-case)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    client: str = ""


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)


class Handler(Protocol):
    """What the front needs from the application (EnrollApp)."""

    base_url: str
    ca: Any
    clock: Any

    def handle(self, req: Request) -> Response: ...

    def housekeeping(self) -> Any: ...


@dataclass
class Limits:
    """Bounds of one server process; the defaults suit a site's enrollment server."""

    max_connections: int = 256
    client_connections: int = 16  # per client address, counted before the TLS handshake
    handshake_seconds: float = 10.0
    request_seconds: float = 10.0  # from a request's first byte to its last
    idle_seconds: float = 30.0  # a kept-alive connection may wait this long for its next request
    requests: Rate = field(default_factory=lambda: Rate(20.0, 100))  # per client address
    workers: int = 8  # threads running handlers (signature checks, database)
    max_body: int = 256 * 1024
    housekeeping_seconds: float = 60.0
    renew_check_seconds: float = 60.0


@dataclass
class FrontStats:
    connections: int = 0
    refused_connections: int = 0  # over a connection cap: closed before TLS
    handshake_failures: int = 0
    timeouts: int = 0  # requests not received within their deadline (or idle too long): connection closed
    rate_limited: int = 0


def _wildcard(host: str) -> bool:
    return host in ("", "0.0.0.0", "::")  # noqa: S104 - recognising the wildcard, not binding it


class EnrollServer:
    """HTTPS around a handler, on a thread (`start`/`stop`, tests and benchmark) or in the foreground (`serve_forever`)."""

    def __init__(self, app: Handler, host: str = "127.0.0.1", port: int = 0, *, public_url: str | None = None,
                 limits: Limits | None = None, cert_days: float = SERVER_CERT_DAYS) -> None:
        self.app = app
        self.host = host
        self.limits = limits or Limits()
        if public_url:
            name, public_port = parse_public_url(public_url)
        elif _wildcard(host):
            raise UsageError(f"--listen {host or '*'}:{port} serves every address: give --public-url https://NAME:PORT, "
                             "the name clients reach this server by (its certificate and URLs carry it)")
        else:
            name, public_port = host, port
        try:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            self._sock = socket.create_server((host, port), family=family, backlog=512)
        except OSError as e:
            raise EnrollError(f"cannot listen on {host}:{port}: {e.strerror}") from None
        self.port = self._sock.getsockname()[1]
        if not public_url:
            public_port = self.port
        shown = f"[{name}]" if ":" in name else name
        app.base_url = f"https://{shown}:{public_port}"
        names = [name] + ([host] if not _wildcard(host) and host != name else [])
        self.certificate = ServerCertificate(app.ca, names, days=cert_days, clock=app.clock)
        self.stats = FrontStats()
        self._requests = Buckets(self.limits.requests, "requests")
        self._open = 0
        self._per_client: dict[str, int] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return self.app.base_url

    @property
    def directory_url(self) -> str:
        return self.app.base_url + "/acme/directory"

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> "EnrollServer":
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main(False)), name="tpmtls-enroll-server",
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise EnrollError("enroll-server did not start")
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until SIGTERM or SIGINT."""
        asyncio.run(self._main(True))

    def stop(self) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and self._thread is not None:
            try:
                loop.call_soon_threadsafe(stopping.set)
            except RuntimeError:  # the loop already ended
                pass
            self._thread.join(30)
            self._thread = None
        self._sock.close()

    def __enter__(self) -> "EnrollServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def renew_certificate(self, force: bool = False) -> bool:
        """Renew the server certificate now if due (or `force`); from any thread. True if it was renewed."""
        if self._loop is None:
            raise EnrollError("the server is not running")
        return asyncio.run_coroutine_threadsafe(self._renew(force), self._loop).result(60)

    # -- the loop -------------------------------------------------------------------------
    async def _main(self, signals: bool) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stopping = asyncio.Event()
        self._pool = ThreadPoolExecutor(self.limits.workers, thread_name_prefix="tpmtls-enroll")
        if signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stopping.set)
        self._sock.setblocking(False)
        background = [asyncio.create_task(self._accept()),
                      asyncio.create_task(self._every(self.limits.housekeeping_seconds, self._housekeeping)),
                      asyncio.create_task(self._every(self.limits.renew_check_seconds, self._renew))]
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            for task in background + list(self._tasks):
                task.cancel()
            await asyncio.gather(*background, *self._tasks, return_exceptions=True)
            self._pool.shutdown(wait=True)
            self._sock.close()

    async def _every(self, seconds: float, job: Any) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await job()
            except Exception as e:  # noqa: BLE001 - housekeeping must outlive a failing database or CA
                _log(f"{job.__name__.strip('_')} failed: {type(e).__name__}: {e}")

    async def _housekeeping(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, self.app.housekeeping)

    async def _renew(self, force: bool = False) -> bool:
        if not force and not self.certificate.due():
            return False
        made = await asyncio.get_running_loop().run_in_executor(self._pool, self.certificate.issue)
        self.certificate.load(made)  # here, on the loop thread: no handshake is starting meanwhile
        return True

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, addr = await loop.sock_accept(self._sock)
            except OSError as e:  # EMFILE and the like: wait a moment instead of spinning
                _log(f"accept failed: {e.strerror or e}")
                await asyncio.sleep(0.5)
                continue
            client = addr[0]
            if self._open >= self.limits.max_connections or self._per_client.get(client, 0) >= self.limits.client_connections:
                self.stats.refused_connections += 1
                conn.close()  # before any TLS work: a flood costs an accept and a close
                continue
            self._open += 1
            self._per_client[client] = self._per_client.get(client, 0) + 1
            self.stats.connections += 1
            task = asyncio.create_task(self._connection(conn, client))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _connection(self, conn: socket.socket, client: str) -> None:
        loop = asyncio.get_running_loop()
        writer: asyncio.StreamWriter | None = None
        try:
            reader = asyncio.StreamReader(limit=64 * 1024)
            protocol = asyncio.StreamReaderProtocol(reader)
            try:
                transport, _ = await loop.connect_accepted_socket(
                    lambda: protocol, conn, ssl=self.certificate.context, ssl_handshake_timeout=self.limits.handshake_seconds)
            except Exception as e:  # noqa: BLE001 - TLS alerts, resets, handshake timeouts: one line, no traceback
                self.stats.handshake_failures += 1
                _log(f"connection from {client}: TLS handshake failed: {type(e).__name__}: {str(e)[:120]}")
                conn.close()
                return
            writer = asyncio.StreamWriter(transport, protocol, reader, loop)
            await self._serve(reader, writer, client)
        except asyncio.CancelledError:
            pass
        except Exception as e:  # noqa: BLE001 - a broken peer must cost one line, not the server
            _log(f"connection from {client}: {type(e).__name__}: {str(e)[:160]}")
        finally:
            self._open -= 1
            left = self._per_client.get(client, 1) - 1
            if left > 0:
                self._per_client[client] = left
            else:
                self._per_client.pop(client, None)
            if writer is not None:
                writer.transport.abort()  # no TLS close_notify dance with a peer that may not answer
            else:
                conn.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: str) -> None:
        h = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
        loop = asyncio.get_running_loop()
        while True:
            req = await self._read(h, reader, writer, client)
            if req is None:
                return
            wait = self._requests.wait_for(client)
            if wait > 0:
                self.stats.rate_limited += 1
                resp = _problem(429, "rateLimited", f"too many requests from {client}; retry in {int(wait) + 1} s",
                                {"Retry-After": str(int(wait) + 1)})
                if req.path.startswith("/acme/"):
                    resp.headers["Link"] = f'<{self.app.base_url}/acme/directory>;rel="index"'
            else:
                assert self._pool is not None
                resp = await loop.run_in_executor(self._pool, self.app.handle, req)
            if not await self._write(h, writer, req.method, resp) or h.our_state is h11.MUST_CLOSE:
                return
            try:
                h.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _read(self, h: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    client: str) -> Request | None:
        """The next complete request, or None (peer gone, protocol error, or deadline: the connection ends)."""
        loop = asyncio.get_running_loop()
        idle_until = loop.time() + self.limits.idle_seconds
        deadline: float | None = None  # set by the request's first byte
        method, path, headers, body = "", "", {}, bytearray()
        while True:
            try:
                event = h.next_event()
            except h11.RemoteProtocolError as e:
                await self._write(h, writer, "", _problem(e.error_status_hint, "malformed", f"bad HTTP request: {e}"))
                return None
            if event is h11.NEED_DATA:
                remaining = (deadline or idle_until) - loop.time()
                data = None
                if remaining > 0:
                    try:
                        data = await asyncio.wait_for(reader.read(64 * 1024), remaining)
                    except asyncio.TimeoutError:
                        data = None
                    except (ConnectionError, OSError, ssl.SSLError):
                        return None
                if data is None:
                    if deadline is not None:  # a request begun and not finished in time: a trickler or a stall
                        self.stats.timeouts += 1
                        _log(f"connection from {client}: request not complete within {self.limits.request_seconds:g} s; "
                             "closed")
                    return None
                if deadline is None and data:
                    deadline = loop.time() + self.limits.request_seconds
                h.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                method = event.method.decode("ascii", "replace")
                path = event.target.decode("ascii", "replace").split("?", 1)[0]
                headers = {k.decode("ascii", "replace").lower(): v.decode("latin-1") for k, v in event.headers}
                length = headers.get("content-length", "0")
                if not length.isdigit() or int(length) > self.limits.max_body:
                    await self._write(h, writer, method, _problem(413, "malformed",
                                                                  f"request body larger than {self.limits.max_body} bytes"))
                    return None
                if h.they_are_waiting_for_100_continue:
                    writer.write(h.send(h11.InformationalResponse(status_code=100, headers=[])))
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > self.limits.max_body:
                    await self._write(h, writer, method, _problem(413, "malformed",
                                                                  f"request body larger than {self.limits.max_body} bytes"))
                    return None
            elif isinstance(event, h11.EndOfMessage):
                return Request(method, path, headers, bytes(body), client)
            else:  # ConnectionClosed, PAUSED
                return None

    async def _write(self, h: h11.Connection, writer: asyncio.StreamWriter, method: str, resp: Response) -> bool:
        """Send one response; False if the peer cannot take it in time."""
        bodiless = resp.status in (204, 304) or resp.status < 200
        headers = [("Content-Type", resp.content_type)] if resp.content_type else []
        if not bodiless:  # RFC 9110 8.6: no Content-Length in a 204
            headers.append(("Content-Length", str(len(resp.body))))
        headers += list(resp.headers.items())
        try:
            phrase = http.HTTPStatus(resp.status).phrase.encode()
        except ValueError:
            phrase = b""
        try:
            data = h.send(h11.Response(status_code=resp.status, headers=headers, reason=phrase))
            if method != "HEAD" and not bodiless and resp.body:
                data += h.send(h11.Data(data=resp.body))
            data += h.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            return False
        try:
            writer.write(data)
            await asyncio.wait_for(writer.drain(), self.limits.request_seconds)
        except (asyncio.TimeoutError, ConnectionError, OSError, ssl.SSLError):
            return False
        return True


def _problem(status: int, kind: str, detail: str, headers: dict[str, str] | None = None) -> Response:
    doc = {"type": ACME_ERROR_PREFIX + kind, "detail": detail, "status": status}
    return Response(status, json.dumps(doc).encode(), "application/problem+json", dict(headers or {}))


def _log(line: str) -> None:
    """A connection-level problem, for the log (stderr; the journal under systemd)."""
    logging.getLogger("tpmtls.enroll_server").warning(line)


__all__ = ["EnrollServer", "FrontStats", "Handler", "Limits", "Request", "Response"]
