"""`tpmtls proxy`: the registry API on loopback for a stock docker, forwarded over TPM-backed mTLS.

dockerd treats a registry whose name resolves into 127.0.0.0/8 as insecure (plain HTTP,
certs.d ignored; docs/facts-docker.md, "dockerd and loopback registries"), so an unmodified `docker push/pull
127.0.0.1:PORT/…` reaches this proxy, which sends each request on to the real registry over
one pool of TLS connections holding the TPM client key. Bodies stream both ways without
being held (`_bodies`: responses through one reused 1 MiB buffer); `Location`, `Link` and
the token realm of `WWW-Authenticate` are rewritten so docker keeps talking to the proxy;
`Authorization` passes through untouched.

Why the standard library's ThreadingHTTPServer: a thread per client connection matches the
blocking urllib3 pool and the blocking TPM signature, HTTP/1.1 keep-alive is built in, and a
proxy for one machine's docker serves tens of connections, not thousands. No new dependency.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import urllib3

from .._callers import foreign_caller
from .._systemd import LISTEN_FD, passed_local_socket
from ..errors import RegistryError, UsageError
from ._bodies import BUFFER, BrokenBody, ClientGone, Counter, dechunk, exactly, relay
from ._head_deadline import HEAD_TIMEOUT, IDLE_TIMEOUT, DeadlineHandler, DeadlineServer
from .transport import ONCE, Retries, Transport, TransportError

if TYPE_CHECKING:
    from .certs import KeyPassword

READ_TIMEOUT = 300.0
#: Upstream connections kept per host; more concurrent requests wait for one to come back.
POOL_SIZE = 32
#: Seconds a request waits for a free upstream connection before it is answered 502.
POOL_WAIT = 60
STATUS_PATH = "/_tpmtls/status"
REALM_PREFIX = "/_tpmtls/realm/"
#: Where a plain-http token realm is pointed instead: credentials stop here, never go out in clear.
REFUSED_REALM = "/_tpmtls/refused-realm"
#: Hop-by-hop headers (RFC 9110 7.6.1) and the ones this proxy sets itself.
_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te",
        "trailer", "transfer-encoding", "upgrade", "host", "content-length", "expect"}
#: A pooled connection the registry closed while idle fails on first use: a request whose body
#: we hold whole is sent again at once on a new one; statuses go back to docker, which retries.
_REPLAY = Retries(attempts=3, statuses=False, backoff=0.0)
_HOST_RE = re.compile(r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")
_REALM_RE = re.compile(r'realm="([^"]*)"', re.IGNORECASE)


def parse_upstream(upstream: str) -> tuple[str, int]:
    """HOST[:PORT] (https://… accepted) → (host, port); 443 by default."""
    text = upstream[len("https://"):] if upstream.startswith("https://") else upstream
    from .reference import valid_hostport

    text = text.rstrip("/")
    hostname: str | None = None
    try:
        parts = urlsplit(f"//{text}")
        hostname, port = parts.hostname, parts.port or 443
    except ValueError:
        port = 0
    if not hostname or "/" in text or port == 0 or "://" in text or not valid_hostport(text):
        raise UsageError(f"--upstream {upstream[:100]!r}: write it as HOST[:PORT] (the registry, over https)")
    return hostname, port


def parse_listen(listen: str) -> tuple[str, int]:
    """HOST:PORT whose every address is loopback (127.0.0.0/8, ::1) → (address, port)."""
    parts = urlsplit(f"//{listen}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None or "/" in listen:
        raise UsageError(f"--listen {listen!r}: write it as 127.0.0.1:PORT (or [::1]:PORT)")
    host = parts.hostname
    try:
        addresses = sorted({str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})
    except (socket.gaierror, UnicodeError) as e:
        raise UsageError(f"--listen {listen}: cannot resolve {host} ({e})") from None
    outside = [a for a in addresses if not ipaddress.ip_address(a.split("%")[0]).is_loopback]
    if outside or not addresses:
        raise UsageError(f"refusing to listen on {listen} ({', '.join(outside or addresses)} is not loopback): anyone "
                         "reaching it would push and pull with your TPM identity; use 127.0.0.1:PORT or [::1]:PORT")
    return (host if host in addresses else addresses[0]), port


@dataclass
class ProxyCounters:
    """What `/_tpmtls/status` reports (plus the TLS figures read from the context)."""

    requests: int = 0
    active: int = 0
    failures: int = 0  # requests answered 502 because the upstream could not be reached or refused us
    bytes_up: int = 0  # request bodies sent upstream
    bytes_down: int = 0  # response bodies sent to clients
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **amounts: int) -> None:
        with self.lock:
            for k, v in amounts.items():
                setattr(self, k, getattr(self, k) + v)


class RegistryProxy:
    """Serves the registry API on a loopback address; every request goes to `upstream` over TLS
    with the client certificate of its certs.d directory (a TPM key, usually)."""

    def __init__(self, upstream: str, listen: str = "127.0.0.1:5000", *, cert_dir: str | Path | None = None,
                 certs_root: str | Path | None = None, resolve: dict[str, str] | None = None,
                 tcti: str | None = None, log: Callable[[str], None] | None = None,
                 key_password: KeyPassword | None = None, head_timeout: float = HEAD_TIMEOUT,
                 idle_timeout: float = IDLE_TIMEOUT) -> None:
        from ..docker.files import lookup, read_cert_dir
        from ..tls.renewed import Renewable
        from .certs import check_own_certificate, searched, ssl_context_for, trust_hint

        self.host, self.port = parse_upstream(upstream)
        self.upstream = f"{self.host}:{self.port}"
        # fd://: systemd's socket (socket activation); its address is known at bind()
        self.listen_host, self.listen_port = ("", 0) if listen == LISTEN_FD else parse_listen(listen)
        self.listen = listen
        name = self.host if self.port == 443 else self.upstream  # Docker's certs.d names 443 without a port
        certs = read_cert_dir(Path(cert_dir)) if cert_dir else lookup(name, Path(certs_root) if certs_root else None)
        where = searched(name, cert_dir, certs_root)
        if certs.client is None:
            raise UsageError(f"{where}: no client certificate (client.cert + client.key); "
                             f"install one with 'tpmtls certs install {name} …' or pass --cert-dir")
        self.client_cert = certs.client[0]
        check_own_certificate(self.client_cert, self.upstream)  # before the registry is blamed for refusing it
        self.log = log or (lambda line: None)
        self.head_timeout, self.idle_timeout = head_timeout, idle_timeout

        def connect() -> Transport:
            self.context = ssl_context_for(certs, tcti, key_password)
            return Transport(self.upstream, self.context, resolve=resolve, connections=POOL_SIZE,
                             read_timeout=READ_TIMEOUT, client_cert=str(self.client_cert), certs_where=where,
                             trust=trust_hint(certs, where))

        def renewed(old: Transport) -> None:  # requests under way finish on the old one
            self.log(f"{self.client_cert} changed on disk (renewed): new upstream connections use it")

        self._upstream = Renewable(certs.client, connect, renewed)
        self.counters = ProxyCounters()
        self._realms: set[str] = set()  # token-server host:port the upstream named in a challenge
        self._lock = threading.Lock()
        self._server: _Server | None = None

    # ---- upstream ------------------------------------------------------------------------

    @property
    def transport(self) -> Transport:
        """The upstream transport, over the client certificate as it is on disk now."""
        return self._upstream.get()

    def allow_realm(self, hostport: str) -> None:
        with self._lock:
            self._realms.add(hostport)

    def realm_allowed(self, hostport: str) -> bool:
        with self._lock:
            return hostport in self._realms

    def check(self) -> str:
        """GET /v2/ upstream: its status line, or a RegistryError saying why not (one line)."""
        resp = self.transport.send("GET", "/v2/", headers={"Host": self.upstream}, retries=ONCE)
        if resp.status not in (200, 401):
            raise RegistryError(f"{self.upstream}: answered {resp.status} to GET /v2/: not a registry?")
        return f"{resp.status} {resp.reason}"

    def tls_stats(self) -> dict[str, int]:
        sessions = getattr(self.context, "sessions", None)
        if sessions is None:
            return {"upstream_handshakes": 0, "resumed_handshakes": 0, "tpm_signatures": 0}
        s = sessions.stats()
        return {"upstream_handshakes": s.full_handshakes + s.resumed_handshakes,
                "full_handshakes": s.full_handshakes, "resumed_handshakes": s.resumed_handshakes,
                "tpm_signatures": s.tpm_signatures}

    def status(self) -> dict[str, Any]:
        """The counters `/_tpmtls/status` serves."""
        c = self.counters
        with c.lock:
            counts = {f.name: getattr(c, f.name) for f in fields(c) if f.name != "lock"}
        return {"upstream": self.upstream, "listen": self.bound, **counts, **self.tls_stats()}

    # ---- serving -------------------------------------------------------------------------

    def bind(self) -> None:
        if self.listen == LISTEN_FD:
            sock = passed_local_socket("tpmtls proxy --listen fd://", allow_unix=False)
            self.listen_host, self.listen_port = str(sock.getsockname()[0]), int(sock.getsockname()[1])
            self._server = _Server((self.listen_host, self.listen_port), _Handler, self, sock.family, sock)
            return
        family = socket.AF_INET6 if ":" in self.listen_host else socket.AF_INET
        try:
            self._server = _Server((self.listen_host, self.listen_port), _Handler, self, family)
        except OSError as e:
            raise UsageError(f"--listen {self.listen}: cannot listen here: {e.strerror}") from None

    @property
    def bound(self) -> str:
        if self._server is None:
            return self.listen
        address = self._server.server_address
        host, port = str(address[0]), int(address[1])
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def serve(self) -> None:
        """Serve until `stop()`."""
        if self._server is None:
            self.bind()
        assert self._server is not None
        try:
            self._server.serve_forever(poll_interval=0.2)
        finally:
            self._server.server_close()
            self.transport.close()

    def stop(self) -> None:
        if self._server is not None:
            threading.Thread(target=self._server.shutdown, daemon=True).start()


class _Server(DeadlineServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], proxy: RegistryProxy,
                 family: socket.AddressFamily, listening: socket.socket | None = None) -> None:
        self.address_family = family
        self.proxy = proxy
        super().__init__(address, handler, proxy.head_timeout, proxy.idle_timeout, bind_and_activate=listening is None)
        if listening is not None:  # already bound and listening (systemd's): serve it as it is
            self.socket.close()
            self.socket = listening
            self.server_address = listening.getsockname()[:2]

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that failed outside a request (reset, cut by its head deadline): one log line."""
        import sys

        error = sys.exc_info()[1]
        self.proxy.log(f"connection from {client_address[0]}:{client_address[1]} ended: "
                       f"{type(error).__name__}: {str(error)[:120]}")


class _Handler(DeadlineHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = READ_TIMEOUT  # one read of a body may wait this long (its head: DeadlineHandler)
    # TCP_NODELAY on docker's connections: a response goes out as headers then body, and with
    # Nagle's algorithm the body waited for the client's delayed ACK, 40 ms per request
    # (measured: 44 ms median for a manifest GET through the proxy, 1.9 ms without Nagle).
    disable_nagle_algorithm = True
    _buffer: memoryview | None = None  # for relaying response bodies, one per connection

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        pass  # one line per request is ours, in _forward

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._forward()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET  # noqa: N815

    # -- one request -----------------------------------------------------------------------

    def _forward(self) -> None:
        proxy = self.server.proxy
        started = time.monotonic()
        proxy.counters.add(requests=1, active=1)
        status, up, down, note = 0, 0, 0, ""
        try:
            refused = foreign_caller(self.headers, [proxy.host])
            if refused:
                status, up, down, note = self._refuse(403, "DENIED", f"tpmtls proxy: {refused}", refused)
                return
            if self.path == STATUS_PATH:
                status, down = self._send_json(200, proxy.status())
                return
            status, up, down, note = self._relay(proxy)
        finally:
            proxy.counters.add(active=-1, bytes_up=up, bytes_down=down)
            ms = (time.monotonic() - started) * 1000
            proxy.log(f"{self.command} {self.path.split('?')[0]} {status} up={up} down={down} {ms:.0f}ms"
                      + (f" {note}" if note else ""))

    def _relay(self, proxy: RegistryProxy) -> tuple[int, int, int, str]:
        client_host = self.headers.get("Host", "")
        if not _HOST_RE.match(client_host):
            client_host = proxy.bound
        target_host, path = proxy.upstream, self.path
        if self.path.startswith(REFUSED_REALM):
            message = ("tpmtls proxy: the registry's token realm is plain http on another host; "
                       "refusing to send credentials there in clear")
            return self._refuse(403, "DENIED", message, "plain-http token realm refused")
        if self.path.startswith(REALM_PREFIX):
            hostport, _, rest = self.path[len(REALM_PREFIX):].partition("/")
            if not proxy.realm_allowed(hostport):
                return self._refuse(404, "NAME_UNKNOWN", "not a token realm this registry named", "unknown realm")
            target_host, path = hostport, "/" + rest
        headers = urllib3.HTTPHeaderDict()
        for name, value in self.headers.items():  # repeated fields (docker sends Accept 4 times) kept apart
            if name.lower() not in _HOP:
                headers.add(name, value)
        headers["Host"] = target_host if not target_host.endswith(":443") else target_host[:-4]
        try:
            body, length, counted = self._request_body()
        except ValueError:
            return self._refuse(400, "UNSUPPORTED", "bad Content-Length", "bad Content-Length")
        if length is not None:
            headers["Content-Length"] = str(length)
        url = path if target_host == proxy.upstream else f"https://{target_host}{path}"
        try:  # a request whose body we hold whole (none, or empty) may be replayed; a streamed one not
            resp = proxy.transport.send(
                self.command, url, body=body, headers=headers, stream=True, decode_content=False,
                chunked=body is not None and length is None, retries=_REPLAY, pool_timeout=POOL_WAIT)
        except (ClientGone, ValueError):
            self.close_connection = True
            return 499, counted.n, 0, "client closed the request or sent a malformed chunked body"
        except TransportError as e:
            line = str(e)
            proxy.counters.add(failures=1)
            self.close_connection = True
            status, down = self._send_json(502, _errors("UNAVAILABLE", f"tpmtls proxy: {line}"), f"tpmtls proxy: {line}")
            return status, counted.n, down, f"upstream failed: {line}"
        try:
            return self._respond(proxy, resp, client_host, counted.n)
        finally:
            resp.release_conn()

    def _request_body(self) -> tuple[Iterator[bytes] | None, int | None, Counter]:
        """The request body as a stream, and its length if the client gave one."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            counter = Counter(dechunk(self.rfile))
            return iter(counter), None, counter
        length = int(self.headers.get("Content-Length") or 0)
        if length <= 0:
            counter = Counter(iter(()))
            body_length = 0 if self.command in ("POST", "PUT", "PATCH") else None
            return (b"" if body_length == 0 else None), body_length, counter  # type: ignore[return-value]
        counter = Counter(exactly(self.rfile, length))
        return iter(counter), length, counter

    def _respond(self, proxy: RegistryProxy, resp: Any, client_host: str, up: int) -> tuple[int, int, int, str]:
        note = ""
        self.send_response_only(resp.status, resp.reason)
        length = resp.headers.get("Content-Length")
        bodyless = self.command == "HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200
        for name, value in resp.headers.iteritems():
            low = name.lower()
            if low in _HOP:
                continue
            if low in ("location", "content-location"):
                value = _rewrite_url(value, proxy.upstream, client_host)
            elif low == "link":
                value = re.sub(r"<([^>]*)>", lambda m: f"<{_rewrite_url(m.group(1), proxy.upstream, client_host)}>",
                               value)
            elif low == "www-authenticate":
                value, note = _rewrite_challenge(value, proxy, client_host)
            self.send_header(name, value)
        if length is not None:
            self.send_header("Content-Length", length)
        elif not bodyless:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if bodyless:
            return resp.status, up, 0, note
        if self._buffer is None:
            self._buffer = memoryview(bytearray(BUFFER))
        try:
            down = relay(resp, self.connection, self._buffer, length is None,
                         int(length) if length is not None and length.isdigit() else None)
        except BrokenBody as e:
            self.close_connection = True  # the client sees a short body, never a wrong one
            resp.close()  # and the upstream connection, half read, is not reused
            return resp.status, up, e.sent, f"stream broken after {e.sent} B: {e}"
        return resp.status, up, down, note

    def _refuse(self, status: int, code: str, message: str, note: str) -> tuple[int, int, int, str]:
        """Answer here, not upstream, in the registry's error format; the connection is closed after."""
        self.close_connection = True
        status, down = self._send_json(status, _errors(code, message))
        return status, 0, down, note

    def _send_json(self, status: int, payload: dict[str, Any], reason: str | None = None) -> tuple[int, int]:
        body = json.dumps(payload, indent=1).encode() + b"\n"
        self.send_response_only(status, _reason_phrase(reason) if reason else None)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Docker-Distribution-Api-Version", "registry/2.0")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()
        return status, len(body)


def _reason_phrase(text: str) -> str:
    """`text` as a reason phrase (RFC 9112 4: visible ASCII, one line, here <= 400 characters). Go clients
    (containerd, dockerd) print a 5xx's reason phrase, never its body (docs/oci-clients.md, "When the registry
    refuses the key")."""
    printable = re.sub(r"[^\x20-\x7e]", "?", text.encode("ascii", "backslashreplace").decode())
    return printable if len(printable) <= 400 else printable[:399] + "~"


def _errors(code: str, message: str) -> dict[str, Any]:
    """The registry's error body (distribution spec), so docker prints our message."""
    return {"errors": [{"code": code, "message": message, "detail": None}]}


def _same_origin(parts: Any, hostport: str) -> bool:
    host, _, port = hostport.rpartition(":")
    try:
        their_port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return False
    return (parts.hostname or "").lower() == host.lower() and their_port == int(port)


def _rewrite_url(url: str, upstream: str, client_host: str) -> str:
    """An absolute URL on the upstream registry → the same path on this proxy."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "https" or not _same_origin(parts, upstream):
        return url  # relative (docker resolves it against us), or another host (a storage redirect)
    return f"http://{client_host}{parts.path}" + (f"?{parts.query}" if parts.query else "")


def _rewrite_challenge(value: str, proxy: RegistryProxy, client_host: str) -> tuple[str, str]:
    """Bearer realm → through this proxy, so docker's token request also uses the TPM key.

    A realm on the registry's own host maps to the same path here; one on another https
    host to /_tpmtls/realm/HOST:PORT/… (forwarded over TLS to that host only). Docker sends
    the user's credentials to the realm; here they travel over loopback, then TLS.
    """
    match = _REALM_RE.search(value)
    if not match or not value.lower().startswith("bearer"):
        return value, ""
    parts = urlsplit(match.group(1))
    if parts.scheme.lower() != "https" or not parts.hostname:
        realm = f"http://{client_host}{REFUSED_REALM}"
        return value[:match.start(1)] + realm + value[match.end(1):], f"token realm {match.group(1)} is not https"
    try:
        hostport = f"{parts.hostname}:{parts.port or 443}"
    except ValueError:
        return value, "token realm with a bad port left as is"
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    if _same_origin(parts, proxy.upstream):
        realm = f"http://{client_host}{path}"
    else:
        proxy.allow_realm(hostport)
        realm = f"http://{client_host}{REALM_PREFIX}{hostport}{path}"
    return value[:match.start(1)] + realm + value[match.end(1):], ""


__all__ = ["RegistryProxy", "ProxyCounters", "parse_listen", "parse_upstream"]
