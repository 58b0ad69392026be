"""The enroll-agent stores only a certificate it should: every wrong one is a 4xx and nothing is
written; strangers cannot talk to it; a client whose pin does not match sends nothing."""

from __future__ import annotations

import os
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from support.commands import one_line, require
from support.daemon import tpmtls_cli
from support.pairing import AgentProcess, Impostor, make_cert
from support.wait import wait_until
from tpmtls.enroll.pairing_client import (
    EnrollmentError,
    connect_pinned,
    pairing_context,
    post_certificate,
)
from tpmtls.enroll.store import CertificateStore
from tpmtls.pki.ca import FileCA
from tpmtls.testing import free_port


@pytest.fixture
def listening_agent(pairing_store, test_tpm, tmp_path):
    """(store, state, port, agent): an enroll-agent on a loopback port (--listen: no systemd here)
    trusting the client store's CA."""
    require("openssl")
    store, state = pairing_store
    port = free_port()
    with AgentProcess(tmp_path, test_tpm.env, "--ca", str(store.ca_dir / "ca.crt"), "--state", str(state),
                      "--listen", f"127.0.0.1:{port}", "--dockerd", "true") as agent:
        yield store, state, port, agent


def _posted(store, port, fingerprint, pem, tcti):
    tls, seen, _ = connect_pinned(pairing_context(store, tcti), "127.0.0.1", port, fingerprint)
    try:
        post_certificate(tls, "127.0.0.1", port, pem)
    finally:
        tls.close()


def test_wrong_certificates_are_refused_and_nothing_is_stored(listening_agent, test_tpm, tmp_path):
    store, state, port, agent = listening_agent
    fp = agent.fingerprint()
    assert stat.S_IMODE(os.stat(state / "server.key").st_mode) == 0o600
    daemon_key = x509.load_pem_x509_certificate((state / "pairing.crt").read_bytes()).public_key()
    ca = FileCA.open(store.ca_dir)
    other_ca = FileCA.init(tmp_path / "other-ca", "another CA")
    stranger = ec.generate_private_key(ec.SECP256R1()).public_key()
    cases = {
        "wrong key": (make_cert(stranger, ca.key, ca.cert), "HTTP 422: certificate refused: for another key"),
        "other CA": (make_cert(daemon_key, other_ca.key, other_ca.cert),
                     "HTTP 403: certificate refused: not issued by this agent's CA"),
        "no serverAuth": (make_cert(daemon_key, ca.key, ca.cert, eku=ExtendedKeyUsageOID.CLIENT_AUTH),
                          "HTTP 422: certificate refused: no extendedKeyUsage serverAuth"),
        "wrong SAN": (make_cert(daemon_key, ca.key, ca.cert, san="elsewhere.example"),
                      "HTTP 422: certificate refused: no subjectAltName for 127.0.0.1"),
        "self-signed": (make_cert(daemon_key, ca.key, None), "HTTP 403"),
        "not PEM": (b"hello", "HTTP 400: certificate refused: the body is not a PEM certificate"),
    }
    for label, (pem, expected) in cases.items():
        with pytest.raises(EnrollmentError) as err:
            _posted(store, port, fp, pem, test_tpm.tcti)
        assert str(err.value).startswith(f"127.0.0.1:{port}: the agent refused the certificate: {expected}"), \
            (label, str(err.value))
        assert sorted(p.name for p in state.iterdir()) == ["pairing.crt", "server.key"], label
    assert agent.text().count("nothing stored") == len(cases)

    # a client of another CA does not get past the TLS handshake
    foreign = tmp_path / "foreign-store"
    tpmtls_cli("ca", "init", str(foreign / "ca"), "--name", "foreign CA", env=test_tpm.env)
    proc = tpmtls_cli("enroll", f"127.0.0.1:{port}", "--store", str(foreign), "--expect-fingerprint", fp,
                      env=test_tpm.env, check=False)
    line = one_line(proc)
    assert line.startswith(f"tpmtls: 127.0.0.1:{port}: the agent refused our client certificate"), line
    assert not (foreign / "servers" / f"127.0.0.1:{port}" / "server.crt").exists()
    assert "TLS handshake failed" in agent.wait_for("TLS handshake failed")

    # a wrong pin: the client aborts (one line) and the agent gets no request
    wrong = "ab" * 32
    proc = tpmtls_cli("enroll", f"127.0.0.1:{port}", "--store", str(store.root), "--expect-fingerprint", wrong,
                      env=test_tpm.env, check=False)
    line = one_line(proc)
    assert line == (f"tpmtls: 127.0.0.1:{port}: presented key SHA-256 {fp}, expected {wrong}: not the agent you "
                    "paired with (a man in the middle, or a reinstalled host); nothing was sent"), line
    assert sorted(p.name for p in state.iterdir()) == ["pairing.crt", "server.key"]
    assert not (store.root / "servers").exists() or not any((store.root / "servers").iterdir())

    # still waiting: the right certificate from the right client is stored, then dockerd is exec'd
    proc = tpmtls_cli("enroll", f"127.0.0.1:{port}", "--store", str(store.root), "--expect-fingerprint",
                      ":".join(fp[i:i + 2] for i in range(0, 64, 2)).upper(), env=test_tpm.env)
    assert f"enrolled 127.0.0.1:{port} (agent key SHA-256 {fp}, expected)" in proc.stdout
    assert proc.stderr == ""
    assert agent.exit_code() == 0  # `true -H fd:// …`: the agent exec'd the daemon binary
    served = x509.load_pem_x509_certificate((state / "server.crt").read_bytes())
    assert served.public_key() == daemon_key
    cert_dir = store.root / "servers" / f"127.0.0.1:{port}"
    assert sorted(p.name for p in cert_dir.iterdir()) == ["ca.pem", "cert.pem", "key.pem", "pinned-key.sha256",
                                                          "server.crt"]
    assert (cert_dir / "pinned-key.sha256").read_text() == f"{fp} expected-out-of-band\n"
    # a second enrollment is a no-op: no connection (the agent is gone), same answer
    proc = tpmtls_cli("enroll", f"127.0.0.1:{port}", "--store", str(store.root), env=test_tpm.env)
    assert proc.stdout.startswith(f"127.0.0.1:{port} is already enrolled; DOCKER_CERT_PATH={cert_dir}")


def test_impostor_gets_nothing(test_tpm, tmp_path):
    """Pinned to the real agent's key, the client meets a man in the middle: it aborts after the
    handshake and the impostor receives not one byte of HTTP (no request, no certificate)."""
    store = CertificateStore(tmp_path / "store")
    store.ca()
    impostor = Impostor(tmp_path)
    proc = tpmtls_cli("enroll", f"127.0.0.1:{impostor.port}", "--store", str(store.root), "--expect-fingerprint",
                      "cd" * 32, env=test_tpm.env, check=False)
    impostor.join()
    line = one_line(proc)
    assert "expected " + "cd" * 32 in line and "nothing was sent" in line, line
    assert impostor.handshakes == 1 and impostor.received == [b""]
    assert not (store.root / "servers").exists()


def test_bad_usage_is_one_line(test_tpm, tmp_path):
    proc = tpmtls_cli("enroll", "127.0.0.1:1", env=test_tpm.env, check=False)
    assert one_line(proc) == "tpmtls: enroll needs HOST[:PORT] --store DIR (pairing) or --acme URL"
    proc = tpmtls_cli("enroll", "--acme", "https://127.0.0.1:1/directory", env=test_tpm.env, check=False)
    line = one_line(proc)  # the ACME client runs: this software TPM has no EK certificate to attest with
    assert "ACME" in line or "EK certificate" in line, line
    proc = tpmtls_cli("enroll", "127.0.0.1:1", "--store", str(tmp_path / "s"), "--expect-fingerprint", "xyz",
                      env=test_tpm.env, check=False)
    assert one_line(proc) == "tpmtls: 'xyz' is not a SHA-256 fingerprint (64 hex digits, colons allowed)"
    proc = tpmtls_cli("enroll-agent", "--ca", str(tmp_path / "nope.crt"), "--state", str(tmp_path),
                      env=test_tpm.env, check=False)
    assert one_line(proc) == ("tpmtls: no listening socket: run under systemd socket activation "
                              "(helpers/tpmtls-enroll-agent.socket) or pass --listen ADDRESS:PORT")
    proc = tpmtls_cli("enroll-agent", "--ca", str(tmp_path / "nope.crt"), "--state", str(tmp_path),
                      "--listen", f"127.0.0.1:{free_port()}", env=test_tpm.env, check=False)
    assert one_line(proc) == f"tpmtls: {tmp_path / 'nope.crt'}: no such CA certificate file"


def test_a_trickling_peer_cannot_hold_the_agent(pairing_store, test_tpm, tmp_path):
    """Each connection has a deadline and a thread of its own: a slow peer neither holds the others up nor
    stays forever."""
    import socket
    import threading
    import time

    store, state = pairing_store
    port = free_port()
    env = {**test_tpm.env, "TPMTLS_ENROLL_DEADLINE": "10"}  # room for a real client on a loaded machine
    with AgentProcess(tmp_path, env, "--ca", str(store.ca_dir / "ca.crt"), "--state", str(state),
                      "--listen", f"127.0.0.1:{port}", "--dockerd", "true") as agent:
        stop = threading.Event()
        sent: list[int] = []

        def trickle() -> None:  # a ClientHello one byte every 0.5 s, for at most 60 s
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                for byte in b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(109):
                    if stop.is_set():
                        return
                    try:
                        s.sendall(bytes([byte]))
                    except OSError:
                        return
                    sent.append(byte)
                    time.sleep(0.5)  # the pace is the point: the ClientHello would take a minute, past any deadline

        slow = threading.Thread(target=trickle, daemon=True)
        slow.start()
        # the slow peer is connected (and being served: its handshake has a thread of its own)
        wait_until(lambda: sent, 30, "the slow peer's first byte")
        with pytest.raises(EnrollmentError) as err:  # a real client still gets its answer
            _posted(store, port, agent.fingerprint(), b"hello", test_tpm.tcti)
        stop.set()
        slow.join(10)
        assert "HTTP 400" in str(err.value), str(err.value)


def _expire_client_certificate(store: CertificateStore, tcti: str) -> None:
    """Re-issue the store's client certificate (same TPM key, same CA) with dates in the past."""
    import datetime

    from cryptography.hazmat.primitives import hashes, serialization

    cert_path, _ = store.ensure_client(tcti)
    current = x509.load_pem_x509_certificate(cert_path.read_bytes())
    ca = FileCA.open(store.ca_dir)
    now = datetime.datetime.now(datetime.timezone.utc)
    expired = (
        x509.CertificateBuilder().subject_name(current.subject).issuer_name(ca.cert.subject)
        .public_key(current.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=10)).not_valid_after(now - datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    cert_path.write_bytes(expired.public_bytes(serialization.Encoding.PEM))


def test_an_expired_client_certificate_is_said_so(listening_agent, test_tpm):
    """The agent refuses an expired client certificate (in TLS 1.3 its alert is often lost in
    the close): the client names the dates, where it used to blame the agent's --ca (any
    error text with "certificate" in it was read so)."""
    store, state, port, agent = listening_agent
    _expire_client_certificate(store, test_tpm.tcti)
    proc = tpmtls_cli("enroll", f"127.0.0.1:{port}", "--store", str(store.root), "--expect-fingerprint",
                      agent.fingerprint(), env=test_tpm.env, check=False)
    line = one_line(proc)
    assert line.startswith(f"tpmtls: 127.0.0.1:{port}: the agent refused our client certificate as expired"), line
    assert " expired on " in line and "client.crt" in line, line
    assert "is its --ca the CA" not in line, line
    assert sorted(p.name for p in state.iterdir()) == ["pairing.crt", "server.key"]


def test_a_port_that_is_not_tls_is_not_a_refusal(test_tpm, tmp_path):
    from support.peers import CountingListener

    store = CertificateStore(tmp_path / "store")
    store.ca()
    listener = CountingListener("http")
    try:
        proc = tpmtls_cli("enroll", f"127.0.0.1:{listener.port}", "--store", str(store.root),
                          "--expect-fingerprint", "ab" * 32, env=test_tpm.env, check=False)
    finally:
        listener.close()
    line = one_line(proc)
    assert line.startswith(f"tpmtls: 127.0.0.1:{listener.port}: does not speak TLS"), line
    assert "refused our client certificate" not in line
