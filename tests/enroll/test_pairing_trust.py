"""Pairing without blind trust: the client trusts on first use only when told to, records nothing
before success, issues certificates as long as the store's policy says; the agent shakes hands
with many peers at once and stores the certificate it checked."""

from __future__ import annotations

import datetime
import json
import socket
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from support.commands import one_line
from support.daemon import tpmtls_cli
from support.pairing import AgentProcess, Impostor, make_cert
from tpmtls.enroll.pairing_client import EnrollmentError, connect_pinned, ensure_server_enrolled, pairing_context
from tpmtls.enroll.store import CertificateStore
from tpmtls.pki.ca import FileCA
from tpmtls.testing import free_port

PEM = serialization.Encoding.PEM


class Listener:
    """A plain TCP port that counts who connects and what they send."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.received = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.settimeout(2)
            try:
                self.received += conn.recv(65536)
            except OSError:
                pass
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.sock.close()


@pytest.fixture
def agent_world(test_tpm, tmp_path):
    """A store with its CA, and an agent trusting that CA on a loopback port (--listen: no systemd here)."""
    store = CertificateStore(tmp_path / "store")
    tpmtls_cli("ca", "init", str(store.ca_dir), "--name", "pairing CA", env=test_tpm.env)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    port = free_port()
    with AgentProcess(tmp_path, test_tpm.env, "--ca", str(store.ca_dir / "ca.crt"), "--state", str(state),
                      "--listen", f"127.0.0.1:{port}", "--dockerd", "true") as agent:
        yield store, state, port, agent


def test_without_fingerprint_or_flag_nothing_is_sent(test_tpm, tmp_path):
    """Neither --expect-fingerprint nor --trust-on-first-use: refused before connecting, and no store made."""
    listener = Listener()
    try:
        proc = tpmtls_cli("enroll", f"127.0.0.1:{listener.port}", "--store", str(tmp_path / "store"),
                          env=test_tpm.env, check=False)
    finally:
        listener.close()
    line = one_line(proc)
    assert line.startswith(f"tpmtls: 127.0.0.1:{listener.port}: whose key to trust?"), line
    assert "--expect-fingerprint" in line and "--trust-on-first-use" in line and "nothing was sent" in line
    assert listener.connections == 0 and listener.received == b""
    assert not (tmp_path / "store").exists()  # not even the store's CA or TPM key were made

    with pytest.raises(EnrollmentError, match="whose key to trust"):
        ensure_server_enrolled(tmp_path / "store", "127.0.0.1:1", tcti=test_tpm.tcti)
    proc = tpmtls_cli("enroll", "127.0.0.1:1", "--store", str(tmp_path / "store"), "--trust-on-first-use",
                      "--expect-fingerprint", "ab" * 32, env=test_tpm.env, check=False)
    assert "give one" in one_line(proc)


def test_a_failed_first_use_records_nothing(test_tpm, tmp_path):
    """Trust on first use against something that is not an agent: it fails, and the key it showed is not kept."""
    store = CertificateStore(tmp_path / "store")
    store.ca()
    impostor = Impostor(tmp_path)
    proc = tpmtls_cli("enroll", f"127.0.0.1:{impostor.port}", "--store", str(store.root), "--trust-on-first-use",
                      env=test_tpm.env, check=False)
    impostor.join()
    one_line(proc)
    assert impostor.handshakes == 1
    assert not (store.root / "servers").exists()  # no pin, no directory: the next attempt trusts nothing from this one


def test_first_use_and_store_policy(agent_world, test_tpm):
    """With the flag, the key that answered is recorded once enrolled; the daemon's certificate lives what the
    store's policy says (default 365 days, not 825)."""
    store, state, port, agent = agent_world
    (store.root / "policy.json").write_text(json.dumps({"server_days": 10}))
    proc = tpmtls_cli("enroll", f"127.0.0.1:{port}", "--store", str(store.root), "--trust-on-first-use",
                      env=test_tpm.env)
    fp = agent.fingerprint()
    assert f"trust on first use: the agent's key SHA-256 is {fp}" in proc.stdout
    assert agent.exit_code() == 0
    pin = store.root / "servers" / f"127.0.0.1:{port}" / "pinned-key.sha256"
    assert pin.read_text() == f"{fp} trusted-on-first-use\n"
    served = x509.load_pem_x509_certificate((state / "server.crt").read_bytes())
    assert served.not_valid_after_utc - served.not_valid_before_utc == datetime.timedelta(days=10, minutes=5)
    client = x509.load_pem_x509_certificate(store.client_cert.read_bytes())
    assert client.not_valid_after_utc - client.not_valid_before_utc == datetime.timedelta(days=30, minutes=5)
    # the store's CA kept both: `tpmtls ca revoke STORE/ca --serial …` can find them
    issued = {p.name for p in (store.ca_dir / "issued").iterdir()}
    assert {f"{served.serial_number:x}.pem", f"{client.serial_number:x}.pem"} <= issued


def test_bad_store_policy_is_one_line(test_tpm, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    (store / "policy.json").write_text(json.dumps({"server_days": 900}))
    proc = tpmtls_cli("enroll", "127.0.0.1:1", "--store", str(store), "--trust-on-first-use", env=test_tpm.env,
                      check=False)
    assert one_line(proc) == f"tpmtls: {store / 'policy.json'}: server_days must be a number of days above 0 and at most 825"


def test_three_idle_connections_do_not_block_an_enrollment(agent_world, test_tpm):
    """Peers that connect and say nothing each hold a connection of their own until their deadline; a real
    client shakes hands meanwhile (one connection at a time, it waited behind all three: 3 x 15 s)."""
    store, state, port, agent = agent_world
    fp = agent.fingerprint()
    idle = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(3)]
    try:
        done = ensure_server_enrolled(store, f"127.0.0.1:{port}", expect_fingerprint=fp, tcti=test_tpm.tcti,
                                      timeout=10)
        assert done.changed and done.trust == "expected"
        for s in idle:  # still open: the agent did not have to give up on them first
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.recv(1)
    finally:
        for s in idle:
            s.close()
    assert agent.exit_code() == 0


def test_the_agent_stores_the_certificate_it_checked(agent_world, test_tpm):
    """A body with more than the certificate (another PEM block, bytes around it): what is stored is the checked
    certificate, re-encoded, and nothing else."""
    store, state, port, agent = agent_world
    fp = agent.fingerprint()
    ca = FileCA.open(store.ca_dir)
    daemon_key = x509.load_pem_x509_certificate((state / "pairing.crt").read_bytes()).public_key()
    good = make_cert(daemon_key, ca.key, ca.cert)
    body = b"junk before\n" + good + ca.cert.public_bytes(PEM) + b"-----BEGIN SOMETHING-----\nAAAA\n"
    tls, _, _ = connect_pinned(pairing_context(store, test_tpm.tcti), "127.0.0.1", port, fp)
    try:
        from tpmtls.enroll.pairing_client import post_certificate

        post_certificate(tls, "127.0.0.1", port, body)
    finally:
        tls.close()
    assert agent.exit_code() == 0
    stored = (state / "server.crt").read_bytes()
    assert stored == x509.load_pem_x509_certificate(good).public_bytes(PEM)
    assert b"junk" not in stored and stored.count(b"BEGIN") == 1


def test_the_store_renews_its_client_certificate(agent_world, test_tpm):
    """The store's CA signs a new certificate for the same TPM key; every server directory's copy follows."""
    store, _state, port, agent = agent_world
    ensure_server_enrolled(store, f"127.0.0.1:{port}", expect_fingerprint=agent.fingerprint(), tcti=test_tpm.tcti)
    copy = store.root / "servers" / f"127.0.0.1:{port}" / "cert.pem"
    first = x509.load_pem_x509_certificate(store.client_cert.read_bytes())
    out = tpmtls_cli("enroll", "--renew", "--store", str(store.root), "--if-due", env=test_tpm.env).stdout
    assert out.startswith(f"{store.client_cert}: not due; renewal at ")
    out = tpmtls_cli("enroll", "--renew", "--store", str(store.root), env=test_tpm.env).stdout
    assert out.startswith(f"renewed {store.client_cert}: valid until ")
    second = x509.load_pem_x509_certificate(store.client_cert.read_bytes())
    assert second.serial_number != first.serial_number and second.public_key() == first.public_key()
    assert copy.read_bytes() == store.client_cert.read_bytes()
    proc = tpmtls_cli("enroll", "127.0.0.1:1", "--store", str(store.root), "--renew", env=test_tpm.env, check=False)
    assert "takes no HOST" in one_line(proc)
