"""Bounded under abuse: a trickling peer, a flood from one address, idle accounts, nonce and session tables.

Each case failed before: a peer sending a byte now and then held a thread for ever (30 s per
read, reset by every byte); 100000 accounts (≈15 min from one client) blocked every new machine
until restart; /attest sessions could be filled with one public EK certificate and software AKs;
the nonce table grew past its cap; an account could open orders without end. The legitimate
machine here enrolls from 127.0.0.1; the abuser comes from 127.0.0.2.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import josepy as jose
import pytest
import requests
from acme import client as acme_client
from acme import messages
from cryptography.hazmat.primitives.asymmetric import ec

import tpmtls
from support.attest import Clock, busy_limits, busy_settings, enroll_machine
from support.commands import require
from support.enroll_server import session_from
from tpmtls.enroll.acme_client import PERMANENT_IDENTIFIER, Enroller, EnrollOptions
from tpmtls.enroll.acme_server import EnrollApp, EnrollServer
from tpmtls.enroll.attestation import attest_request, post_json, secret_request
from tpmtls.enroll.ratelimit import Rate
from tpmtls.enroll.serve import Limits
from tpmtls.tpm import attest

ABUSER = "127.0.0.2"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    require("swtpm", "swtpm_setup", "swtpm_localca", "tpm2-abrmd")
    tmp = tmp_path_factory.mktemp("abuse")
    with enroll_machine(tmp) as m:
        yield tmp, m.tpm, m.files


@contextmanager
def server(world, name: str, *, settings=None, limits=None, clock=None):
    tmp, _, files = world
    app = EnrollApp(*files, db=f"sqlite:{tmp / (name + '.db')}", settings=settings or busy_settings(),
                    clock=clock or time.time)
    with EnrollServer(app, limits=limits or busy_limits()) as srv:
        yield app, srv
    app.close()


def ca(world) -> str:
    return str(world[2][0] / "ca.crt")


def enroll(world, srv, tmp_path: Path, name: str = "legit"):
    return Enroller(world[1], EnrollOptions(srv.directory_url, cafile=ca(world), key_out=tmp_path / f"{name}.key",
                                            cert_out=tmp_path / f"{name}.cert")).run()


def tls_socket(world, srv, source: str = ABUSER) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", srv.port), timeout=10, source_address=(source, 0))
    return ssl.create_default_context(cafile=ca(world)).wrap_socket(raw, server_hostname="127.0.0.1")


def test_trickling_peers_lose_their_connection_not_a_thread(world, tmp_path):
    """More tricklers than worker threads, each a byte every 0.2 s: each is cut at its deadline; a machine enrolls meanwhile."""
    limits = busy_limits(request_seconds=3.0, workers=2, client_connections=64)
    with server(world, "trickle", limits=limits) as (_, srv):
        peers = [tls_socket(world, srv) for _ in range(8)]
        request = b"POST /acme/new-order HTTP/1.1\r\nHost: x\r\nContent-Type: application/jose+json\r\n"
        closed: list[bool] = [False] * len(peers)

        def trickle(i: int) -> None:
            sock = peers[i]
            sock.settimeout(0.2)
            for n in range(300):  # 60 s at most; the deadline is 3 s
                try:
                    sock.sendall(request[n % len(request):n % len(request) + 1])
                    if sock.recv(1) == b"":
                        closed[i] = True
                        return
                except (socket.timeout, TimeoutError):
                    continue
                except (OSError, ssl.SSLError):
                    closed[i] = True
                    return

        threads = [threading.Thread(target=trickle, args=(i,)) for i in range(len(peers))]
        for t in threads:
            t.start()
        result = enroll(world, srv, tmp_path)  # two workers, eight tricklers: they hold none of them
        for t in threads:
            t.join(90)
        for p in peers:
            p.close()
        assert result.certificate is not None
        assert all(closed), closed
        assert srv.stats.timeouts >= len(peers)


def test_a_flood_from_one_address_does_not_stop_another_machine(world, tmp_path):
    limits = busy_limits(requests=Rate(20.0, 60), client_connections=8)
    with server(world, "flood", limits=limits) as (_, srv):
        stop = threading.Event()
        seen: dict[int, int] = {}
        retry_after: set[str] = set()

        def flood() -> None:
            s = session_from(ABUSER, ca(world))
            for _ in range(2000):  # bounded; stops as soon as the legitimate enrollment is done
                if stop.is_set():
                    return
                try:
                    resp = s.head(srv.url + "/acme/new-nonce", timeout=10, verify=ca(world))
                except requests.RequestException:
                    continue
                seen[resp.status_code] = seen.get(resp.status_code, 0) + 1
                if resp.status_code == 429:
                    retry_after.add(resp.headers.get("Retry-After", ""))

        threads = [threading.Thread(target=flood) for _ in range(12)]  # more connections than its cap of 8
        for t in threads:
            t.start()
        try:
            time.sleep(0.5)  # let the flood reach its limits before the machine starts (not an assertion)
            result = enroll(world, srv, tmp_path)
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        assert result.certificate is not None
        assert seen.get(429, 0) > 0 and all(r.isdigit() and int(r) >= 1 for r in retry_after), (seen, retry_after)
        assert srv.stats.rate_limited > 0


def test_connections_are_capped_per_address_before_tls(world):
    with server(world, "conns", limits=busy_limits(client_connections=4)) as (_, srv):
        held = [tls_socket(world, srv) for _ in range(4)]
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            tls_socket(world, srv)  # the fifth from this address is closed before the handshake
        other = tls_socket(world, srv, "127.0.0.1")  # another address still gets in
        other.close()
        for s in held:
            s.close()
        assert srv.stats.refused_connections >= 1


def _account(world, srv, source: str):
    key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    net = acme_client.ClientNetwork(key, alg=jose.ES256, verify_ssl=ca(world))
    net.session.mount("https://", session_from(source, ca(world)).get_adapter("https://"))
    client = acme_client.ClientV2(acme_client.ClientV2.get_directory(srv.directory_url, net), net)
    net.account = client.new_account(messages.NewRegistration.from_data(terms_of_service_agreed=True))
    return client


def test_new_accounts_are_limited_per_address_and_idle_ones_expire(world, tmp_path):
    clock = Clock()
    settings = busy_settings(new_accounts=Rate(0.001, 3), account_idle=3600.0, keep_orders=60.0)
    with server(world, "accounts", settings=settings, clock=clock) as (app, srv):
        clients = [_account(world, srv, ABUSER) for _ in range(3)]
        with pytest.raises(messages.Error, match="too many new accounts from 127.0.0.2") as info:
            _account(world, srv, ABUSER)
        assert info.value.typ == "urn:ietf:params:acme:error:rateLimited"
        enroll(world, srv, tmp_path)  # the machine at 127.0.0.1 still enrolls (its own account)
        assert app.store.counts()["accounts"] == 4
        clock.offset += 2 * 3600 + 120  # idle past account_idle, its order past keep_orders
        assert app.housekeeping()["accounts"] == 4
        with pytest.raises(messages.Error, match="accountDoesNotExist"):
            clients[0].query_registration(clients[0].net.account)


def test_one_pending_attestation_per_ek(world):
    """Before: every /attest added a session (up to 10000, then every machine got 429)."""
    _, tpm, _ = world
    with server(world, "sessions") as (app, srv):
        s = requests.Session()
        s.verify = ca(world)
        ek = attest.read_ek(tpm)
        pending = []
        for _ in range(5):
            ak = attest.create_ak(tpm)
            pending.append((ak, post_json(s, srv.url + "/attest", attest_request(tpm, ek, ak))))
        assert app.store.counts()["attest_sessions"] == 1
        ak, answer = pending[-1]
        post_json(s, srv.url + "/secret", secret_request(tpm, ak, answer, srv.url, "rsa"))  # the latest one works
        ak, answer = pending[0]
        with pytest.raises(tpmtls.EnrollmentError, match="unknown or already used secret"):
            post_json(s, srv.url + "/secret", secret_request(tpm, ak, answer, srv.url, "rsa"))


def test_nonce_table_keeps_its_cap(world):
    with server(world, "nonces", settings=busy_settings(nonce_cap=50)) as (app, srv):
        first = requests.head(srv.url + "/acme/new-nonce", verify=ca(world), timeout=30).headers["Replay-Nonce"]
        s = requests.Session()
        for _ in range(120):
            s.head(srv.url + "/acme/new-nonce", verify=ca(world), timeout=30)
        assert app.store.counts()["nonces"] <= 50
        assert app.store.take_nonce(first) is None  # the oldest went first


def test_open_orders_are_limited_per_account(world):
    with server(world, "orders", settings=busy_settings(open_orders_per_account=3)) as (app, srv):
        client = _account(world, srv, "127.0.0.1")
        order = messages.NewOrder(identifiers=[messages.Identifier(typ=PERMANENT_IDENTIFIER, value="urn:ek:sha256:x")])
        for _ in range(3):
            client._post(client.directory["newOrder"], order)
        with pytest.raises(messages.Error, match="this account has 3 open orders") as info:
            client._post(client.directory["newOrder"], order)
        assert info.value.typ == "urn:ietf:params:acme:error:rateLimited"


def test_defaults_are_bounded():
    limits = Limits()
    assert limits.max_connections <= 1024 and limits.client_connections <= 64
    assert limits.request_seconds <= 30 and limits.idle_seconds <= 120 and limits.workers <= 32
