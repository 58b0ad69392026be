"""One client connection of `tpmtls daemon-proxy`: every request read whole, checked and passed
on; after an upgrade (attach, exec, `run -it`), raw bytes both ways.

Why parse instead of forwarding bytes: a check that peeks at a prefix of the first request
misses heads that are long, slow or late, and lets every later request on a kept-alive
connection through (docs/daemon.md, "Every request checked"). h11 (python-hyper's sans-I/O
HTTP/1.1 state machine, the one under httpcore and uvicorn) parses both directions: a request
head is read whole under a deadline, checked, and written anew for the daemon, so the daemon
reads exactly what was checked (no second request hidden in odd framing); responses are
followed too, so the proxy knows when a connection is idle, when it upgraded, and when the
client's end-of-file still has a response to wait for.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time
from typing import Any, Callable

import h11

from ..errors import TpmtlsError
from ._hangup import peer_closed
from ._relay_terms import (
    BUFFER_LIMIT,
    CLOSING_STALL,
    HANGUP_CHECK,
    HEAD_TIMEOUT,
    IDLE_TIMEOUT,
    MAX_HEAD,
    REASONS,
    Outcome,
    linger,
    refusal,
)
from ._stream import CHUNK, TlsStream

Check = Callable[[list[tuple[str, str]]], "str | None"]

_IN = select.POLLIN | select.POLLRDHUP
_GONE = select.POLLHUP | select.POLLERR | select.POLLNVAL


class Relay:
    """Serves one accepted client connection until it ends; `evict()` may end it early when idle."""

    def __init__(self, client: socket.socket, peer: object, *, open_upstream: Callable[[], TlsStream],
                 explain: Callable[[BaseException], str], check: Check | None, stop: threading.Event,
                 on_first_reply: Callable[[TlsStream], None], half_close: bool,
                 head_timeout: float = HEAD_TIMEOUT, idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.client, self.peer = client, peer
        self._open_upstream, self._explain, self._check = open_upstream, explain, check
        self._stop, self._on_first_reply, self._half_close = stop, on_first_reply, half_close
        self._head_timeout, self._idle_timeout = head_timeout, idle_timeout
        self.outcome = Outcome()
        self.down = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)  # faces the client
        self.up: h11.Connection | None = None  # faces the daemon, once a request was let through
        self.tls: TlsStream | None = None
        self.raw = False  # upgraded: bytes pass as they are
        self.to_client = bytearray()
        self.to_upstream = bytearray()  # ciphertext
        self.client_eof = self.upstream_eof = False
        self.closing = False  # answer sent, nothing more is read as requests
        self.done = False
        self._replied = False
        self._ahead = 0  # bytes the client sent beyond a request whose response is pending
        self._head_started: float | None = None
        self._accepted = time.monotonic()
        self._awaiting_since: float | None = self._accepted  # waiting for a request head
        self._watch_hangup = False  # half-closed client: check now and then whether it is gone
        self._next_hangup_check = 0.0
        self._closing_deadline = 0.0
        self._lock = threading.Lock()
        self._evicted = False

    # ---- for the accepting thread ------------------------------------------------------------

    def idle_since(self) -> float | None:
        """When the connection started waiting for a request head (None: busy)."""
        with self._lock:
            return None if self._evicted or self.raw or self.closing else self._awaiting_since

    def evict(self) -> bool:
        """End the connection if it is still waiting for a request (a newer one needs the slot)."""
        with self._lock:
            if self._evicted or self._awaiting_since is None or self.raw or self.closing:
                return False
            self._evicted = True
        try:
            self.client.shutdown(socket.SHUT_RDWR)  # wakes the connection's poll at once
        except OSError:
            pass
        return True

    # ---- the connection's own thread ----------------------------------------------------------

    def run(self) -> Outcome:
        self.client.setblocking(False)
        poller = select.poll()
        try:
            while not self.done:
                if self._stop.is_set():
                    self._end("the proxy is stopping")
                    break
                self._register(poller)
                for fd, events in poller.poll(self._wait_ms()):
                    if self.done:
                        break
                    if fd == self.client.fileno():
                        self._client_ready(events)
                    elif self.tls is not None and fd == self.tls.raw.fileno():
                        self._upstream_ready(events)
                self._timers()
                if self.closing and not self.to_client and not self.done:
                    self._end(self.outcome.ended or "answered")
        except (ssl.SSLError, OSError) as e:
            self._upstream_failed(e)
        finally:
            self._finish()
        return self.outcome

    def _register(self, poller: Any) -> None:
        cmask = 0
        if not self.client_eof:
            cmask |= _IN if self._reading_client() else (select.POLLRDHUP if not self._watch_hangup else 0)
        if self.to_client:
            cmask |= select.POLLOUT
        poller.register(self.client, cmask)
        if self.tls is not None:
            umask = 0
            if not self.upstream_eof and not self.closing and len(self.to_client) < BUFFER_LIMIT:
                umask |= select.POLLIN
            if self.to_upstream:
                umask |= select.POLLOUT
            poller.register(self.tls.raw, umask)

    def _reading_client(self) -> bool:
        if len(self.to_upstream) >= BUFFER_LIMIT:
            return False
        if self.raw or self.closing:
            return True
        return self.down.their_state in (h11.IDLE, h11.SEND_BODY) or self._ahead < MAX_HEAD

    def _wait_ms(self) -> int:
        waits = [0.5]
        deadline = self._deadline()
        if deadline is not None:
            waits.append(max(0.0, deadline - time.monotonic()))
        return int(min(waits) * 1000) + 1

    def _deadline(self) -> float | None:
        if self.closing:
            return self._closing_deadline
        if self.raw or self._awaiting_since is None:
            return None
        if self._head_started is not None:
            return self._head_started + self._head_timeout
        if self.outcome.requests == 0:
            return self._accepted + self._head_timeout
        return self._awaiting_since + self._idle_timeout

    def _timers(self) -> None:
        now = time.monotonic()
        deadline = self._deadline()
        if deadline is not None and now >= deadline and not self.done:
            if self.closing:
                self._end("the client did not take the last bytes")
            elif self._head_started is not None:
                self._refuse(408, f"the request head did not arrive within {self._head_timeout:g} s")
            elif self.outcome.requests == 0:
                self._end(f"no request within {self._head_timeout:g} s")
            else:
                self._end(f"idle for {self._idle_timeout:g} s")
        if self._watch_hangup and now >= self._next_hangup_check and not self.done:
            self._next_hangup_check = now + HANGUP_CHECK
            if peer_closed(self.client, self.peer):
                self._end("the client closed the connection")

    # ---- client side --------------------------------------------------------------------------

    def _client_ready(self, events: int) -> None:
        if events & (select.POLLIN | select.POLLRDHUP) and self._reading_client() and not self.client_eof:
            try:
                data = self.client.recv(CHUNK)
            except BlockingIOError:
                return
            except OSError:
                self._end("the client reset the connection")
                return
            if not data:
                self._client_ended()
                return
            self.outcome.up += len(data)
            if self.closing:
                return  # an answer was given and the connection ends: the rest is dropped
            if self.raw:
                self._to_upstream(data)
            else:
                if self.down.their_state not in (h11.IDLE, h11.SEND_BODY):
                    self._ahead += len(data)
                elif self._awaiting_since is not None and self._head_started is None:
                    self._head_started = time.monotonic()
                self.down.receive_data(data)
                self._client_events()
        elif events & select.POLLRDHUP and not self.client_eof:
            # not reading (buffers full) but the client hung up: gone, or only done sending?
            if peer_closed(self.client, self.peer):
                self._end("the client closed the connection")
            else:
                self._watch_hangup = True
        elif events & _GONE and not events & select.POLLOUT:
            self._end("the client closed the connection")
            return
        if events & select.POLLOUT and self.to_client and not self.done:
            try:
                sent = self.client.send(self.to_client)
            except BlockingIOError:
                return
            except OSError:
                self._end("the client went away")
                return
            del self.to_client[:sent]
            self.outcome.down += sent
            self._closing_deadline = time.monotonic() + CLOSING_STALL

    def _client_ended(self) -> None:
        """End of file from the client: a whole close ends everything, a half-close may not."""
        self.client_eof = True
        if self._evicted:
            self._end("closed while idle: a new connection needed its slot")
        elif peer_closed(self.client, self.peer):
            self._end("the client closed the connection")
        elif self.closing:
            pass  # the answer is being delivered
        elif self.raw:
            if self._half_close and self.tls is not None:
                self.tls.close_notify()  # the CLI's stdin ended: dockerd reads end of stdin
                self.to_upstream += self.tls.outgoing.read()
            self._watch_hangup = True  # the output keeps flowing until the daemon ends it
        elif self.down.their_state is h11.DONE and self.down.our_state in (h11.SEND_RESPONSE, h11.SEND_BODY):
            self._watch_hangup = True  # a response is on its way: deliver it, then close
        elif self._head_started is not None or self.down.their_state is h11.SEND_BODY:
            self._end("the client stopped in the middle of a request")
        else:
            self._end("the client closed the connection")

    def _client_events(self) -> None:
        """Requests the client sent: each checked before a byte of it goes upstream."""
        while not self.closing and not self.done:
            try:
                event = self.down.next_event()
            except h11.RemoteProtocolError as e:
                status = e.error_status_hint if e.error_status_hint in REASONS else 400
                what = (f"the request head is too large (more than {MAX_HEAD} bytes)" if status == 431
                        else f"a malformed request ({e})")
                self._refuse(status, what)
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                with self._lock:
                    if self._evicted:
                        return
                    self._awaiting_since = self._head_started = None
                fields = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers.raw_items()]
                why = self._judge(event.target, fields)
                if why:
                    self._refuse(*why)
                    return
                if self.tls is None and not self._connect():
                    return
                self.outcome.requests += 1
                self._send_upstream(h11.Request(method=event.method, target=event.target,
                                                headers=event.headers.raw_items()))
            elif isinstance(event, h11.Data):
                self._send_upstream(h11.Data(data=event.data))
            elif isinstance(event, h11.EndOfMessage):
                self._send_upstream(h11.EndOfMessage(headers=event.headers.raw_items()))
                self._next_cycle()
            else:
                return

    def _judge(self, target: bytes, fields: list[tuple[str, str]]) -> tuple[int, str] | None:
        # h11 bounds a head still arriving; one that arrived in a single read is measured here
        if len(target) + sum(len(k) + len(v) + 4 for k, v in fields) > MAX_HEAD:
            return 431, f"the request head is too large (more than {MAX_HEAD} bytes)"
        names = {k.lower() for k, _ in fields}
        if "transfer-encoding" in names and "content-length" in names:
            return 400, "a request with both Content-Length and Transfer-Encoding is refused"
        if self._check is not None:
            why = self._check(fields)
            if why:
                return 403, why
        return None

    def _connect(self) -> bool:
        try:
            self.tls = self._open_upstream()
        except TpmtlsError as e:
            self.outcome.failed = True
            self._refuse(502, str(e))
            return False
        self.tls.raw.setblocking(False)
        self.up = h11.Connection(h11.CLIENT)
        self.outcome.resumed = bool(self.tls.obj.session_reused)
        return True

    def _send_upstream(self, event: Any) -> None:
        assert self.up is not None
        try:
            data = self.up.send(event) or b""
        except h11.LocalProtocolError as e:  # e.g. an HTTP/1.0 request without Host
            self._refuse(400, f"the request cannot be passed on ({e})")
            return
        self._to_upstream(data)

    def _to_upstream(self, plain: bytes) -> None:
        assert self.tls is not None
        self.tls.obj.write(plain)
        self.to_upstream += self.tls.outgoing.read()

    # ---- upstream side ------------------------------------------------------------------------

    def _upstream_ready(self, events: int) -> None:
        assert self.tls is not None
        if events & (select.POLLIN | _GONE) and not self.upstream_eof:
            try:
                data = self.tls.raw.recv(CHUNK)
            except BlockingIOError:
                data = None
            if data is not None:
                if data:
                    self.tls.incoming.write(data)
                    plain, still_open = self.tls.drain()
                else:
                    plain, still_open = b"", False
                self.to_upstream += self.tls.outgoing.read()
                if plain:
                    if not self._replied:
                        self._replied = True
                        self._on_first_reply(self.tls)  # a TLS 1.3 ticket has arrived by now
                    if self.raw:
                        self.to_client += plain
                    else:
                        self._upstream_events(plain)
                if not still_open and not self.done:
                    self._upstream_ended()
        if events & select.POLLOUT and self.to_upstream and not self.done:
            try:
                sent = self.tls.raw.send(self.to_upstream)
            except BlockingIOError:
                return
            del self.to_upstream[:sent]

    def _upstream_events(self, plain: bytes) -> None:
        """Responses from the daemon, passed to the client; a 101 switches to raw bytes."""
        assert self.up is not None
        self.up.receive_data(plain)
        while not self.done:
            try:
                event = self.up.next_event()
            except h11.RemoteProtocolError as e:
                self._upstream_failed(e)
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101:
                    self._switch(event)
                    return
                self._send_client(h11.InformationalResponse(status_code=event.status_code,
                                                             headers=event.headers.raw_items(), reason=event.reason))
            elif isinstance(event, h11.Response):
                self._send_client(h11.Response(status_code=event.status_code, headers=event.headers.raw_items(),
                                               reason=event.reason))
            elif isinstance(event, h11.Data):
                self._send_client(h11.Data(data=event.data))
            elif isinstance(event, h11.EndOfMessage):
                self._send_client(h11.EndOfMessage(headers=event.headers.raw_items()))
                self._next_cycle()
            else:
                return

    def _send_client(self, event: Any) -> None:
        try:
            self.to_client += self.down.send(event) or b""
        except h11.LocalProtocolError as e:
            self._end(f"the daemon's response cannot be passed on ({e})")

    def _switch(self, event: h11.InformationalResponse) -> None:
        """The daemon upgraded (hijacked) the connection: from here on, bytes as they are."""
        assert self.up is not None
        self._send_client(h11.InformationalResponse(status_code=101, headers=event.headers.raw_items(),
                                                    reason=event.reason))
        if self.done:
            return
        self.raw = True
        client_ahead, _ = self.down.trailing_data
        daemon_ahead, _ = self.up.trailing_data
        if client_ahead:
            self._to_upstream(bytes(client_ahead))
        self.to_client += daemon_ahead
        if self.client_eof and self._half_close:
            assert self.tls is not None
            self.tls.close_notify()
            self.to_upstream += self.tls.outgoing.read()

    def _next_cycle(self) -> None:
        """Both the request and its response are complete: wait for the next request, or close."""
        assert self.up is not None
        if self.down.our_state not in (h11.DONE, h11.MUST_CLOSE) \
                or self.down.their_state not in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED):
            return  # the request or its response is still under way
        states = (self.down.our_state, self.down.their_state, self.up.our_state, self.up.their_state)
        if any(s is h11.MUST_CLOSE or s is h11.CLOSED for s in states):
            self.outcome.ended = "closed after the response (Connection: close)"
            self.closing = True
            self._closing_deadline = time.monotonic() + CLOSING_STALL
            return
        if not all(s is h11.DONE for s in states):
            return
        if self.client_eof:
            self.outcome.ended = "the client had finished sending"
            self.closing = True
            self._closing_deadline = time.monotonic() + CLOSING_STALL
            return
        self.down.start_next_cycle()
        self.up.start_next_cycle()
        with self._lock:
            self._awaiting_since = time.monotonic()
        self._head_started = self._awaiting_since if self._ahead else None
        self._ahead = 0
        self._watch_hangup = False
        self._client_events()  # a request the client sent early (pipelined) is judged now

    def _upstream_ended(self) -> None:
        self.upstream_eof = True
        if self.raw or self.up is None:
            self._close_after("the daemon ended the stream")
        elif self.up.their_state is h11.SEND_BODY:
            self._upstream_events(b"")  # a body delimited by the close ends here; a cut one fails
            if not self.done and not self.closing:
                self._end("the daemon closed the connection in the middle of a response")
        elif self.up.their_state is h11.SEND_RESPONSE:
            if self._replied:
                self._refuse(502, "the daemon closed the connection without answering", failed=True)
            else:  # Go's TLS 1.3 server closes right after the handshake when it refuses our certificate
                self._upstream_failed(ConnectionResetError("EOF occurred after the handshake"))
        else:
            self._close_after("the daemon closed the connection")

    def _upstream_failed(self, error: BaseException) -> None:
        """A TLS or socket error upstream: before any response, the client is told why."""
        if self.done:
            return
        if not self.raw and self.down.our_state is h11.SEND_RESPONSE and not self.closing:
            self._refuse(502, self._explain(error), failed=True)
        else:
            self._end(f"upstream error: {type(error).__name__}: {str(error)[:120]}")

    # ---- endings ------------------------------------------------------------------------------

    def _refuse(self, status: int, message: str, failed: bool = False) -> None:
        """Answer here, as a daemon would (the CLI prints 'Error response from daemon: …'), then close."""
        self.to_client += refusal(status, message)
        self.outcome.refused = message
        self.outcome.failed = self.outcome.failed or failed
        self._close_after(f"answered {status}")

    def _close_after(self, why: str) -> None:
        """Deliver what is buffered for the client, then end."""
        self.closing = True
        self.outcome.ended = self.outcome.ended or why
        self._closing_deadline = time.monotonic() + CLOSING_STALL

    def _end(self, why: str) -> None:
        self.outcome.ended = self.outcome.ended if self.closing and self.outcome.ended else why
        self.done = True

    def _finish(self) -> None:
        """Close the upstream; give the client what is left and a moment to stop sending, then close."""
        if self.tls is not None:
            self.tls.close()
        if not self.closing or self.client_eof and not self.to_client:
            return
        self.outcome.down += linger(self.client, bytes(self.to_client))

__all__ = ["Relay", "Outcome", "MAX_HEAD", "HEAD_TIMEOUT", "IDLE_TIMEOUT"]
