"""`tpmtls proxy` (http.server): every request on a kept-alive connection goes through the caller
check, heads too large are refused before anything is forwarded, and a request head must
arrive in time — a silent or slow client cannot keep its thread. Raw sockets against a real
mTLS registry behind the proxy."""

from __future__ import annotations

import re
import socket
import time
from contextlib import contextmanager
from typing import Iterator

import pytest

from support.commands import require
from support.proxy import in_thread

HEAD_TIMEOUT = 1.5


@contextmanager
def serving(registry, tpm_certs, tcti: str) -> Iterator:
    from tpmtls.registry.proxy import RegistryProxy

    lines: list[str] = []
    proxy = RegistryProxy(f"localhost:{registry.port}", "127.0.0.1:0", cert_dir=tpm_certs, tcti=tcti,
                          log=lines.append, head_timeout=HEAD_TIMEOUT, idle_timeout=HEAD_TIMEOUT * 2)
    with in_thread(proxy):
        yield proxy, lines


@pytest.fixture(scope="module")
def proxy(registry, tpm_certs, test_tpm):
    require("docker-registry")
    with serving(registry, tpm_certs, test_tpm.tcti) as (p, lines):
        p.lines = lines
        p.listen_port = int(p.bound.rsplit(":", 1)[1])
        yield p


def talk(port: int, data: bytes, *, answers: int = 1) -> list[bytes]:
    """Send `data` on one connection; the status lines of the first `answers` responses, or b'' per
    response the proxy closed the connection before."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(data)
        return _status_lines(s, answers)


def _status_lines(s: socket.socket, answers: int) -> list[bytes]:
    got = b""
    for _ in range(1000):
        found = re.findall(rb"HTTP/1\.[01] \d{3}[^\r\n]*", got)
        if len(found) >= answers and got.endswith(b"}\n"):  # the proxy's answers are JSON
            break
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        got += chunk
    found = re.findall(rb"HTTP/1\.[01] \d{3}[^\r\n]*", got)
    return (found + [b""] * answers)[:answers]


def status(host: str = "127.0.0.1", extra: str = "") -> bytes:
    return f"GET /_tpmtls/status HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


def test_the_second_and_pipelined_requests_are_checked(proxy):
    assert talk(proxy.listen_port, status() + status("rebound.example"), answers=2)[1].startswith(b"HTTP/1.1 403")
    assert talk(proxy.listen_port, status() + status(extra="Origin: null\r\n"), answers=2)[1].startswith(b"HTTP/1.1 403")
    with socket.create_connection(("127.0.0.1", proxy.listen_port), timeout=30) as s:
        s.sendall(status())
        assert _status_lines(s, 1)[0].startswith(b"HTTP/1.1 200")
        s.sendall(status(extra="Host: rebound.example\r\n"))  # two Host fields: which one would the registry see?
        assert _status_lines(s, 1)[0].startswith(b"HTTP/1.1 403")


@pytest.mark.parametrize("request_bytes, code", [
    (b"GET /v2/" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", b"414"),
    (b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 70_000 + b"\r\n\r\n", b"431"),
    (b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Many: 1\r\n" * 150 + b"\r\n", b"431"),
])
def test_oversized_heads_are_refused_before_forwarding(proxy, request_bytes, code):
    before = proxy.counters.requests
    line = talk(proxy.listen_port, request_bytes)[0]
    assert line.split()[1:2] == [code], line
    assert proxy.counters.requests == before  # the forwarding never started


def test_a_silent_or_slow_client_loses_its_connection(proxy):
    with socket.create_connection(("127.0.0.1", proxy.listen_port), timeout=30) as s:
        assert s.recv(100) == b""  # nothing sent: closed after the head timeout
    with socket.create_connection(("127.0.0.1", proxy.listen_port), timeout=30) as s:
        request = status()
        started = time.monotonic()
        try:
            for byte in request:  # a byte every 0.3 s: each read is quick, the head is not
                s.sendall(bytes([byte]))
                time.sleep(0.3)
                if time.monotonic() - started > HEAD_TIMEOUT * 4:
                    break
            answer = s.recv(100)
        except (BrokenPipeError, ConnectionResetError):
            answer = b""
        assert not answer.startswith(b"HTTP/1.1 200"), answer
    with socket.create_connection(("127.0.0.1", proxy.listen_port), timeout=30) as s:
        s.sendall(status())
        assert _status_lines(s, 1)[0].startswith(b"HTTP/1.1 200")
        assert s.recv(100) == b""  # then idle past the keep-alive timeout: closed
