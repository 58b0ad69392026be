"""Client session resumption: the TPM signs once per server, not once per connection."""

from __future__ import annotations

import asyncio
import socket

import pytest

import tpmtls
from support.peers import OpenSSLServer
from support.tls_clients import stdlib_get
from tpmtls.tpm.pool import default_pool


def _pool_signatures(tcti: str) -> int:
    return default_pool(tcti).stats().signatures


def test_second_connection_is_resumed_without_a_tpm_signature(tpm_client, pki, s_server, test_tpm):
    cert, key = tpm_client["ecc-p256"]
    ctx = tpmtls.ssl_context(cert, key, pki.ca_file, tcti=test_tpm.tcti)
    before = _pool_signatures(test_tpm.tcti)
    for _ in range(5):
        assert b"Client certificate" in stdlib_get(ctx, s_server.port)
    stats = ctx.sessions.stats()
    assert (stats.full_handshakes, stats.resumed_handshakes, stats.tpm_signatures) == (1, 4, 1)
    assert _pool_signatures(test_tpm.tcti) - before == 1


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_both_tls_versions_resume(version, tpm_client, pki, s_server, test_tpm):
    cert, key = tpm_client["rsa2048"]
    ctx = tpmtls.ssl_context(cert, key, pki.ca_file, tcti=test_tpm.tcti, tls_version=version)
    for _ in range(3):
        stdlib_get(ctx, s_server.port)
    assert ctx.sessions.stats().resumed_handshakes == 2


def test_requests_session_resumes_new_connections(tpm_client, pki, s_server, test_tpm):
    cert, key = tpm_client["ecc-p256"]
    before = _pool_signatures(test_tpm.tcti)
    with tpmtls.requests_session(cert, key, pki.ca_file, tcti=test_tpm.tcti) as session:
        for _ in range(4):  # s_server -www closes every connection: each request opens a new one
            assert session.get(f"https://localhost:{s_server.port}/", timeout=20).ok
    assert _pool_signatures(test_tpm.tcti) - before == 1


def test_no_resumption_across_a_new_client_certificate_or_ca_set(tpm_client, pki, s_server, test_tpm):
    cert, key = tpm_client["ecc-p256"]
    other_cert, other_key = tpm_client["ecc-p384"]
    ctx = tpmtls.ssl_context(cert, key, pki.ca_file, tcti=test_tpm.tcti)
    stdlib_get(ctx, s_server.port)
    assert ctx.sessions.stats().cached_sessions == 1
    ctx.load_verify_locations(str(pki.ca_file))  # other trust anchors: nothing cached survives
    assert ctx.sessions.stats().cached_sessions == 0
    stdlib_get(ctx, s_server.port)
    soft_cert, soft_key = pki.software_client("resumption-client")
    ctx.load_cert_chain(str(soft_cert), str(soft_key))  # another client certificate: the same
    assert ctx.sessions.stats().cached_sessions == 0
    assert b"resumption-client" in stdlib_get(ctx, s_server.port)
    assert ctx.sessions.stats().resumed_handshakes == 0
    separate = tpmtls.ssl_context(other_cert, other_key, pki.ca_file, tcti=test_tpm.tcti)
    stdlib_get(separate, s_server.port)
    assert separate.sessions.stats().resumed_handshakes == 0


def test_a_server_that_refuses_resumption_still_works(tpm_client, pki, test_tpm):
    cert, key = tpm_client["ecc-p256"]
    with OpenSSLServer(pki, "-no_ticket", "-no_cache") as stateless:
        ctx = tpmtls.ssl_context(cert, key, pki.ca_file, tcti=test_tpm.tcti)
        for _ in range(3):
            assert b"Client certificate" in stdlib_get(ctx, stateless.port)
    stats = ctx.sessions.stats()
    assert (stats.full_handshakes, stats.resumed_handshakes, stats.tpm_signatures) == (3, 0, 3)


def test_resumption_can_be_turned_off(tpm_client, pki, s_server, test_tpm):
    cert, key = tpm_client["ecc-p256"]
    ctx = tpmtls.ssl_context(cert, key, pki.ca_file, tcti=test_tpm.tcti, resume=False)
    before = _pool_signatures(test_tpm.tcti)
    for _ in range(3):
        stdlib_get(ctx, s_server.port)
    assert ctx.sessions is None
    assert _pool_signatures(test_tpm.tcti) - before == 3


def test_asyncio_connections_resume(tpm_client, pki, s_server, test_tpm):
    cert, key = tpm_client["ecc-p256"]
    ctx = tpmtls.ssl_context(cert, key, pki.ca_file, tcti=test_tpm.tcti)

    async def fetch() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", s_server.port, ssl=ctx, server_hostname="localhost")
        writer.write(b"GET / HTTP/1.0\r\n\r\n")
        data = await reader.read()
        writer.close()
        return data

    for _ in range(3):
        assert b"Client certificate" in asyncio.run(fetch())
    assert ctx.sessions.stats().resumed_handshakes == 2


def test_pyopenssl_connections_resume(tpm_client, pki, s_server, test_tpm):
    from OpenSSL import SSL

    cert, key = tpm_client["ecc-p256"]
    ctx = tpmtls.pyopenssl_context(cert, key, pki.ca_file, hostname="localhost", tcti=test_tpm.tcti)
    before = _pool_signatures(test_tpm.tcti)
    for _ in range(3):
        sock = socket.create_connection(("127.0.0.1", s_server.port), timeout=20)
        sock.settimeout(None)  # pyOpenSSL reads a timed socket as non-blocking
        conn = SSL.Connection(ctx, sock)
        conn.set_tlsext_host_name(b"localhost")
        conn.set_connect_state()
        conn.do_handshake()
        conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
        try:
            while conn.recv(65536):
                pass
        except (SSL.ZeroReturnError, SSL.SysCallError):
            pass
        conn.shutdown()
        sock.close()
    stats = ctx.tpmtls_sessions.stats()
    assert (stats.full_handshakes, stats.resumed_handshakes) == (1, 2)
    assert _pool_signatures(test_tpm.tcti) - before == 1


def test_a_resumed_session_survives_a_tpm_outage(fresh_tpm, tmp_path):
    """Once a session is cached, new connections to that server need no TPM at all."""
    from support.peers import Pki

    pki = Pki(tmp_path / "pki")
    key = tpmtls.connect(fresh_tpm.tcti).create_key("ecc-p256", tmp_path / "k.key")
    cert = pki.issue(key.public_key(), "outage", "k.crt")
    with OpenSSLServer(pki) as stateless_tpm_server:
        ctx = tpmtls.ssl_context(cert, tmp_path / "k.key", pki.ca_file, tcti=fresh_tpm.tcti)
        stdlib_get(ctx, stateless_tpm_server.port)
        fresh_tpm.abrmd.kill()
        assert b"Client certificate" in stdlib_get(ctx, stateless_tpm_server.port)
    assert ctx.sessions.stats().resumed_handshakes == 1


def test_a_server_without_resumable_sessions_leaves_no_one_waiting(tpm_client, pki, test_tpm):
    """TLS 1.2 with neither tickets nor a session cache: nothing to keep, and no thread waits for it."""
    cert, key = tpm_client["ecc-p256"]
    with OpenSSLServer(pki, "-no_ticket", "-no_cache") as stateless:
        ctx = tpmtls.ssl_context(cert, key, pki.ca_file, tcti=test_tpm.tcti, tls_version="1.2")
        stdlib_get(ctx, stateless.port)
        assert ctx.sessions._inflight == {}  # a later connection would otherwise wait for a session forever
        stdlib_get(ctx, stateless.port)
    assert ctx.sessions.stats().full_handshakes == 2


def test_a_tls13_server_without_tickets_holds_waiters_once(tpm_client, pki, test_tpm):
    """The first connection stays open and never gets a ticket: a second one goes on, and the flight ends."""
    import socketserver
    import threading

    from support.peers import verifying_server_context

    server_ctx = verifying_server_context(pki)
    server_ctx.num_tickets = 0  # TLS 1.3 without tickets: nothing to resume, ever

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            with server_ctx.wrap_socket(self.request, server_side=True) as tls:
                tls.recv(1024)
                tls.sendall(b"HTTP/1.0 200 OK\r\n\r\nClient certificate seen\n")

    socketserver.ThreadingTCPServer.daemon_threads = True
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler) as no_tickets:
        threading.Thread(target=no_tickets.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        port = no_tickets.server_address[1]
        cert, key = tpm_client["ecc-p256"]
        ctx = tpmtls.ssl_context(cert, key, pki.ca_file, tcti=test_tpm.tcti, tls_version="1.3")
        raw = socket.create_connection(("127.0.0.1", port), timeout=20)
        first = ctx.wrap_socket(raw, server_hostname="localhost")  # handshake done, never read: no ticket
        try:
            done: list[bytes] = []
            second = threading.Thread(target=lambda: done.append(stdlib_get(ctx, port)))
            second.start()
            second.join(30)
            assert done and b"Client certificate" in done[0]
            assert ctx.sessions._inflight == {}  # later connections do not wait for this server again
        finally:
            first.close()
            no_tickets.shutdown()
