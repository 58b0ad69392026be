"""Client TLS session resumption: one cache per context, so a TPM signs once per server.

Every full handshake with a client certificate costs one TPM signature: 1–2 ms on
swtpm, 40–250 ms on a discrete TPM. A resumed handshake (TLS 1.3 PSK, TLS 1.2 ticket or
session id) costs none. Python's `ssl` keeps no client-side cache, so each connection
would sign again; this one keeps the newest session per (server name, port), as long as
the server's ticket lifetime allows, bounded in size, thread-safe.

It lives on the context (`TpmSSLContext.sessions`), so a different client certificate or
CA set — another context — never resumes a session made with this one, and the context
empties its cache when its certificate or trust anchors are loaded again.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Hashable

# How long threads that waited for another thread's full handshake wait further for its
# TLS 1.3 ticket (it arrives with that connection's first read).
TICKET_WAIT = 0.5
DEFAULT_SIZE = 128  # servers per context: a client talks to a few registries and daemons


@dataclass(frozen=True)
class ResumptionStats:
    """What a context's handshakes cost: full ones (a TPM signature when a client
    certificate was asked for) and resumed ones (none)."""

    full_handshakes: int
    resumed_handshakes: int
    tpm_signatures: int
    cached_sessions: int


class _Flight:
    """One thread's full handshake with a server that others wait for."""

    __slots__ = ("settled", "shaken")

    def __init__(self) -> None:
        self.shaken = threading.Event()
        self.settled = threading.Event()


class SessionCache:
    """The newest resumable session per server, least recently used evicted beyond `size`."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self.size = size
        self._sessions: OrderedDict[Hashable, Any] = OrderedDict()  # ssl.SSLSession or pyOpenSSL's
        self._lock = threading.Lock()
        self._full = self._resumed = self._signatures = 0
        self._inflight: dict[Hashable, _Flight] = {}

    def get(self, server: Hashable) -> Any:
        """A session for `server` whose lifetime has not run out, or None."""
        with self._lock:
            session = self._sessions.get(server)
            if session is None:
                return None
            if isinstance(session, ssl.SSLSession) and time.time() >= session.time + session.timeout:
                del self._sessions[server]
                return None
            self._sessions.move_to_end(server)
            return session

    def put(self, server: Hashable, session: ssl.SSLSession | None) -> None:
        """Keep `session` for `server` if it can be resumed (has a ticket or an id); either
        way, threads waiting for this server's first handshake go on."""
        if session is not None and (session.has_ticket or session.id):
            with self._lock:
                self._sessions[server] = session
                self._sessions.move_to_end(server)
                while len(self._sessions) > self.size:
                    self._sessions.popitem(last=False)
        self.settled(server)

    def put_pyopenssl(self, server: Hashable, session: Any) -> None:
        """Keep a pyOpenSSL `Session` (it tells nothing about tickets: the newest one wins)."""
        with self._lock:
            self._sessions[server] = session
            self._sessions.move_to_end(server)
            while len(self._sessions) > self.size:
                self._sessions.popitem(last=False)

    def forget(self, server: Hashable) -> None:
        with self._lock:
            self._sessions.pop(server, None)
        self.settled(server)

    def lead_or_wait(self, server: Hashable, wait: float) -> Any:
        """A session for `server`; if there is none and another thread's full handshake with
        it is under way, wait for that one's session (at most `wait` seconds) instead of
        signing again. Returns None to the thread that should make the full handshake.

        Many threads starting at once would otherwise each sign in the TPM for the same
        server: at 50 ms a signature, 16 threads queue for most of a second.
        """
        session = self.get(server)
        if session is not None or wait <= 0:
            return session
        with self._lock:
            flight = self._inflight.get(server)
            if flight is None:
                self._inflight[server] = _Flight()
                return None  # we lead: shaken() and settled() follow
        # The leader's handshake, then (TLS 1.3) its ticket, which comes with its first
        # read; a server that sends none, or a leader that does not read, holds us only
        # TICKET_WAIT once: then the flight is dropped and nobody waits on it again.
        flight.shaken.wait(wait)
        flight.settled.wait(min(wait, TICKET_WAIT))
        session = self.get(server)
        if session is None:
            self.settled(server)
        return session

    def shaken(self, server: Hashable) -> None:
        """The leading full handshake with `server` completed (its session may come later)."""
        with self._lock:
            flight = self._inflight.get(server)
        if flight is not None:
            flight.shaken.set()

    def settled(self, server: Hashable) -> None:
        """The full handshake with `server` is over (session kept, none to keep, or it failed):
        release waiters."""
        with self._lock:
            flight = self._inflight.pop(server, None)
        if flight is not None:
            flight.shaken.set()
            flight.settled.set()

    def clear(self) -> None:
        """Drop every session (the client certificate or the trust anchors changed)."""
        with self._lock:
            self._sessions.clear()

    def count(self, resumed: bool, signatures: int) -> None:
        with self._lock:
            if resumed:
                self._resumed += 1
            else:
                self._full += 1
            self._signatures += signatures

    def stats(self) -> ResumptionStats:
        with self._lock:
            return ResumptionStats(self._full, self._resumed, self._signatures, len(self._sessions))
