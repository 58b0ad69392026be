"""HTTPS to a registry and to the hosts it sends us to, for the client and the proxy alike.

One urllib3 connection pool per host:port over one (TPM-backed) `ssl.SSLContext`, so the
TPM signs per new connection, not per request; `--resolve` connects to another address
while SNI, the certificate check and `Host` keep the name; only https leaves this process
(credentials and layer data never travel in clear); what retrying can fix (a lost
connection, 408/429/5xx) is retried a bounded number of times, honouring Retry-After; and
every failure becomes one `TransportError` line whose cause tls/diagnosis.py decides.
As in go-containerregistry's `remote/transport`, this layer knows nothing of
authentication (auth.py) or of the distribution API (client.py, upload.py).

urllib3 is used directly rather than through requests: uploads stream from re-openable
sources, and every retry is ours to bound.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import urllib3
from urllib3.exceptions import EmptyPoolError
from urllib3.exceptions import HTTPError as Urllib3Error

from ..errors import RegistryError
from ..tls.diagnosis import Cause, Diagnosis, diagnose, diagnose_response, own_certificate_problem

if TYPE_CHECKING:
    from .credentials import Credentials

RETRY_STATUS = {408, 429, 500, 502, 503, 504}
ATTEMPTS = 5  # per request, and per upload resync
CONNECT_TIMEOUT = 10.0  # TCP connect and TLS handshake; a silent server fails in this, once
#: Causes that another attempt cannot change: the peer's identity, ours, the protocol, the TPM.
FINAL = {Cause.NOT_TLS, Cause.UNTRUSTED, Cause.NAME_MISMATCH, Cause.REFUSED, Cause.EXPIRED, Cause.TPM,
         Cause.TLS_FAILED}


@dataclass(frozen=True)
class Retries:
    """How one request is retried: `attempts` in all, pausing `backoff` seconds doubled each
    time (or what Retry-After asks, at most 10 s); `statuses`: 408/429/5xx are retried too."""

    attempts: int = ATTEMPTS
    statuses: bool = True
    backoff: float = 0.2


#: One attempt: the caller decides what a failure means (an upload resyncs instead).
ONCE = Retries(attempts=1, statuses=False, backoff=0.0)


def parse_resolve(values: list[str] | None) -> dict[str, str]:
    """curl's --resolve HOST:PORT:ADDR → {"HOST:PORT": "ADDR"}."""
    out: dict[str, str] = {}
    for value in values or []:
        host, _, rest = value.partition(":")
        port, _, addr = rest.partition(":")
        if not host or not port.isdigit() or not addr:
            raise RegistryError(f"--resolve {value!r}: write it as HOST:PORT:ADDRESS")
        out[f"{host}:{port}"] = addr.strip("[]")
    return out


class TransportError(RegistryError):
    """A request that could not be completed, as one line; `diagnosis` says why, and
    `transient` whether another attempt might have worked (a lost connection, not a refusal)."""

    def __init__(self, message: str, diagnosis: Diagnosis | None = None, transient: bool = False) -> None:
        super().__init__(message)
        self.diagnosis = diagnosis
        self.transient = transient


@dataclass(frozen=True)
class Target:
    """Where a URL goes: its pool, the request target, whether it is the registry itself
    (the only host our credentials go to), and the `Host` header it needs."""

    pool: urllib3.HTTPSConnectionPool
    path: str
    home: bool
    host: str
    hostport: str


class _TrackedPool(urllib3.HTTPSConnectionPool):
    """A connection pool that knows every connection it made, idle or in use, so `abort()`
    can reach a request blocked on a peer that stopped reading or sending."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.made: weakref.WeakSet[Any] = weakref.WeakSet()

    def _new_conn(self) -> Any:
        conn = super()._new_conn()
        self.made.add(conn)
        return conn

    def abort(self) -> None:
        """Shut every connection's socket down: a send or receive blocked on it returns at once."""
        for conn in list(self.made):
            sock = getattr(conn, "sock", None)
            if sock is not None:
                try:  # the plain socket's shutdown: SSLSocket's own would drop its TLS state under a reader
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
                except OSError:
                    pass


class Transport:
    """HTTPS to `registry` ("host[:port]", 443 by default) and the hosts it names; thread-safe."""

    def __init__(self, registry: str, context: ssl.SSLContext, *, resolve: dict[str, str] | None = None,
                 connections: int = 4, read_timeout: float = 120.0, client_cert: str | None = None,
                 certs_where: str | None = None, trust: str | None = None) -> None:
        """`certs_where`: where the certs.d files were looked for; `trust`: what to check when the
        registry's certificate is not trusted (both for the one-line failures)."""
        host, _, port = registry.rpartition(":") if ":" in registry else (registry, "", "443")
        self.registry = registry
        self.host = host
        self.port = int(port)
        self.client_cert = client_cert  # where our client certificate came from (None: no client cert)
        self.certs_where = certs_where or f"/etc/tpmtls/certs.d/{registry}/, or --cert-dir"
        self.trust = trust or "check ca.crt in its certs.d directory"
        self.context = context
        self._resolve = dict(resolve or {})
        self._connections = connections
        self._timeout = urllib3.Timeout(connect=CONNECT_TIMEOUT, read=read_timeout)
        self._pools: dict[str, _TrackedPool] = {}  # host:port → pool
        self._answered: set[str] = set()  # host:port that have answered a request
        self._lock = threading.Lock()
        self._aborted = threading.Event()

    def close(self) -> None:
        with self._lock:
            pools = list(self._pools.values())
        for pool in pools:
            pool.close()

    def abort(self) -> None:
        """Cut every connection, in use or not (an interrupted push or pull): a transfer blocked on
        a stalled peer fails now instead of at its read timeout, so its clean-up runs and the
        command ends. No request starts or is retried after it."""
        self._aborted.set()
        with self._lock:
            pools = list(self._pools.values())
        for pool in pools:
            pool.abort()

    # -- where requests go --------------------------------------------------------------------

    def pool(self, host: str, port: int) -> _TrackedPool:
        """The pool for https://host:port, connecting where --resolve says; SNI and the certificate check use `host`."""
        key = f"{host}:{port}".lower()
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                address = self._resolve.get(f"{host}:{port}", host)
                pool = self._pools[key] = _TrackedPool(
                    address, port, ssl_context=self.context, server_hostname=host, assert_hostname=host,
                    maxsize=self._connections, block=True, timeout=self._timeout, retries=False)
            return pool

    def target(self, url: str, what: str = "a request") -> Target:
        """Where `url` (a path on the registry, or an absolute URL) goes. Only https leaves this
        process: credentials and layer data never travel in clear (docs/trust.md, "Registry credentials")."""
        parts = urlsplit(url)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if not parts.scheme and not parts.netloc:
            return Target(self.pool(self.host, self.port), path, True, self.registry, f"{self.host}:{self.port}")
        if parts.scheme.lower() != "https":
            raise RegistryError(f"{self.registry}: refusing to send {what} to {url.split('?')[0]}: "
                                "it is not https (credentials and layer data never travel in clear)")
        host, port = parts.hostname or "", parts.port or 443
        home = host.lower() == self.host.lower() and port == self.port
        return Target(self.pool(host, port), path, home, self.registry if home else parts.netloc, f"{host}:{port}")

    def is_home(self, url: str) -> bool:
        """Does `url` go to the registry itself (relative, or its own https origin)?"""
        parts = urlsplit(url)
        if not parts.scheme and not parts.netloc:
            return True
        return (parts.scheme.lower() == "https" and (parts.hostname or "").lower() == self.host.lower()
                and (parts.port or 443) == self.port)

    # -- requests ------------------------------------------------------------------------------

    def send(self, method: str, url: str, *, headers: Any = None, body: Any = None, stream: bool = False,
             chunked: bool = False, decode_content: bool = True, retries: Retries = Retries(),
             what: str = "a request", pool_timeout: int | None = None) -> Any:
        """One request, retried as `retries` says; the response whatever its status (after the
        retried ones), or a `TransportError`. A streamed body (an iterator) is never sent twice."""
        replayable = body is None or isinstance(body, (bytes, str))
        attempts = retries.attempts if replayable else 1
        for attempt in range(attempts):
            if self._aborted.is_set():
                raise TransportError(f"{self.registry}: {what} not sent: the transfer was stopped")
            target = self.target(url, what)
            hdrs = urllib3.HTTPHeaderDict(headers or {})
            if "Host" not in hdrs:
                hdrs["Host"] = target.host
            try:
                resp = target.pool.urlopen(method, target.path, body=body, headers=hdrs, redirect=False,
                                           assert_same_host=False, preload_content=not stream,
                                           decode_content=decode_content, chunked=chunked, retries=False,
                                           pool_timeout=pool_timeout)
            except EmptyPoolError:
                raise TransportError(f"{self._where(target)}: no free connection within {pool_timeout} s "
                                     f"({self._connections} in use)", None, transient=True) from None
            except Urllib3Error as e:
                found = diagnose(e, ours=self.client_cert)
                answered = target.hostport.lower() in self._answered
                transient = found.cause not in FINAL and (answered or found.cause is not Cause.TIMEOUT)
                if not transient or attempt == attempts - 1:
                    raise TransportError(self.explain(found, target, method, attempt + 1, answered), found,
                                         transient) from None
                time.sleep(retries.backoff * 2**attempt)
                continue
            with self._lock:
                self._answered.add(target.hostport.lower())
            if retries.statuses and resp.status in RETRY_STATUS and attempt < attempts - 1:
                resp.drain_conn()
                time.sleep(_retry_after(resp, retries.backoff * 2**attempt))
                continue
            return resp
        raise AssertionError("unreachable")  # pragma: no cover

    # -- one line per failure -------------------------------------------------------------------

    def _where(self, target: Target) -> str:
        return self.registry if target.home else target.hostport

    def explain(self, found: Diagnosis, target: Target, method: str, attempts: int, answered: bool) -> str:
        """Why a request to `target` failed, in the registry's terms."""
        where = self._where(target)
        cause = found.cause
        if cause is Cause.NOT_TLS:
            return (f"{where}: answers in plain HTTP, not TLS (check the port: tpmtls talks to registries "
                    "over https only)")
        if cause is Cause.NAME_MISMATCH:
            name = target.hostport.rpartition(":")[0]
            also = f" (it names {found.names})" if found.names else ""
            return f"{where}: its certificate is not valid for the name {name!r}{also}"
        if cause is Cause.UNTRUSTED:
            return f"{where}: server certificate not trusted ({found.reason}): {self.trust}"
        if cause is Cause.EXPIRED and not found.ours:
            state = "is not valid yet" if found.not_yet_valid else "has expired"
            return f"{where}: its server certificate {state} ({found.reason})"
        if found.refused:
            return self.refused(found.dates or found.reason)
        if cause is Cause.TIMEOUT and not answered:
            return (f"{where}: accepted the connection but did not answer within {CONNECT_TIMEOUT:.0f} s "
                    "(is a TLS registry listening there?)")
        if cause is Cause.CLOSED and not answered and target.home:
            # TLS 1.3: our side of the handshake ends before the server judges our certificate
            # (RFC 8446, 4.4.2); its alert can be lost in the close.
            return self.refused(f"it closed every TLS connection right after the handshake: {found.reason}")
        if cause is Cause.UNREACHABLE:
            return f"{where}: cannot connect ({found.reason}): is the registry listening there?"
        if cause in (Cause.TPM, Cause.TLS_FAILED):
            return f"{where}: TLS failed: {found.reason}"
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        return f"{where}: {method} failed{tries}: {found.reason}"

    def refused(self, detail: str) -> str:
        """The registry (or its TLS terminator) wants a client certificate it did not get or accept."""
        if self.client_cert is None:
            return (f"{self.registry}: the registry requires a client certificate and none is configured for it "
                    f"(client.cert + client.key in {self.certs_where}; {detail})")
        renew = own_certificate_problem(self.client_cert)
        if renew is not None:  # it expired while we ran: say so, and how to renew it
            return f"{self.registry}: the registry refused our client certificate {renew}"
        return f"{self.registry}: the registry refused our client certificate {self.client_cert} ({detail})"

    def refusal(self, method: str, url: str, resp: Any, credentials: Credentials | None = None) -> str:
        """One line for an answer that is not what the request needed: a TLS terminator refusing
        our certificate after the handshake (NGINX's 400), 401, 403, or the registry's error codes."""
        path = urlsplit(url).path or "/"
        terminator = diagnose_response(resp.status, resp.data or b"", ours=self.client_cert)
        if terminator is not None:
            return self.refused(terminator.dates or terminator.reason)
        detail = registry_errors(resp.data)
        if resp.status == 401:
            who = f" as {credentials.username} ({credentials.source})" if credentials else ""
            return f"{self.registry}: authentication failed{who}: {detail or 'unauthorized'}"
        if resp.status == 403:
            return f"{self.registry}: access denied for {path}: {detail or 'forbidden'}"
        return f"{self.registry}: {method} {path} answered {resp.status}{': ' + detail if detail else ''}"


def registry_errors(body: bytes | None) -> str:
    """The distribution spec's error body (`{"errors": [{"code", "message"}]}`) as "CODE: message; …"."""
    try:
        errors = json.loads(body or b"{}").get("errors") or []
        return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
    except (ValueError, AttributeError):
        return ""


def _retry_after(resp: Any, default: float) -> float:
    try:
        return min(10.0, float(resp.headers.get("Retry-After", default)))
    except ValueError:
        return default


__all__ = ["ATTEMPTS", "ONCE", "RETRY_STATUS", "Retries", "Target", "Transport", "TransportError", "parse_resolve",
           "registry_errors"]
