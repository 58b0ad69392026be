"""A deadline for reading a request head in `tpmtls proxy` (http.server, a thread per connection).

A socket timeout bounds each read, not the head: a client sending a byte every few seconds
(or nothing, after connecting) would keep its thread for ever. One watcher thread per proxy
shuts down the sockets whose head is late, which ends the blocked read in their handler.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

#: Seconds the first request's head may take from the connection's start.
HEAD_TIMEOUT = 10.0
#: Seconds a kept-alive connection may wait for its next request's head. Longer than Go's
#: IdleConnTimeout (90 s): dockerd drops an idle connection before we do, so it never races us.
IDLE_TIMEOUT = 120.0


class HeadDeadlines:
    """Sockets whose request head must arrive by a deadline; overdue ones are shut down."""

    def __init__(self, tick: float = 0.25) -> None:
        self._armed: dict[int, tuple[float, socket.socket]] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._tick = tick
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="tpmtls-head-deadlines", daemon=True)
        self._thread.start()

    def arm(self, sock: socket.socket, seconds: float) -> int:
        token = next(self._ids)
        with self._lock:
            self._armed[token] = (time.monotonic() + seconds, sock)
        return token

    def disarm(self, token: int) -> None:
        with self._lock:
            self._armed.pop(token, None)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _watch(self) -> None:
        while not self._stop.wait(self._tick):
            now = time.monotonic()
            with self._lock:
                late = [t for t, (deadline, _) in self._armed.items() if deadline <= now]
                socks = [self._armed.pop(t)[1] for t in late]
            for sock in socks:
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # the handler's read returns: it ends the connection
                except OSError:
                    pass


class DeadlineServer(ThreadingHTTPServer):
    """An http.server whose handlers read each request head under a deadline: `head_timeout` for
    a connection's first, `idle_timeout` for a kept-alive connection's next."""

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 head_timeout: float = HEAD_TIMEOUT, idle_timeout: float = IDLE_TIMEOUT,
                 bind_and_activate: bool = True) -> None:
        self.head_timeout, self.idle_timeout = head_timeout, idle_timeout
        self.deadlines = HeadDeadlines()
        try:
            super().__init__(address, handler, bind_and_activate=bind_and_activate)
        except BaseException:  # a port in use: the watcher ends with the server that never was
            self.deadlines.close()
            raise

    def server_close(self) -> None:
        super().server_close()
        self.deadlines.close()


class DeadlineHandler(BaseHTTPRequestHandler):
    """A handler of a DeadlineServer: a slow or silent client cannot keep its thread."""

    server: DeadlineServer
    _served = 0
    _deadline = -1

    def handle_one_request(self) -> None:
        first = self._served == 0
        deadlines = self.server.deadlines
        self._deadline = deadlines.arm(self.connection, self.server.head_timeout if first else self.server.idle_timeout)
        try:
            super().handle_one_request()
        finally:
            deadlines.disarm(self._deadline)
        self._served += 1

    def parse_request(self) -> bool:
        ok = super().parse_request()
        self.server.deadlines.disarm(self._deadline)  # the head is in; a body's reads have their own timeout
        return ok


__all__ = ["HeadDeadlines", "DeadlineServer", "DeadlineHandler", "HEAD_TIMEOUT", "IDLE_TIMEOUT"]
