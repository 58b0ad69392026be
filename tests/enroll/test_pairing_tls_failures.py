"""The pairing client says why a TLS exchange with the agent failed, and only that: an expired
client certificate is not "is its --ca the CA in the store?", a port that does not speak TLS
is not a refusal of our certificate."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from support.commands import require
from support.daemon import one_line, tpmtls_cli
from support.pairing import AgentProcess
from support.peers import CountingListener
from tpmtls.enroll.store import CertificateStore
from tpmtls.pki.ca import FileCA
from tpmtls.testing import free_port


@pytest.fixture
def store_and_agent(test_tpm, tmp_path):
    """A client store, and an agent trusting the store's CA."""
    require("openssl")
    store = CertificateStore(tmp_path / "store")
    tpmtls_cli("ca", "init", str(store.ca_dir), "--name", "pairing CA", env=test_tpm.env)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    port = free_port()
    with AgentProcess(tmp_path, test_tpm.env, "--ca", str(store.ca_dir / "ca.crt"), "--state", str(state),
                      "--listen", f"127.0.0.1:{port}", "--dockerd", "true") as agent:
        yield store, port, agent


def _expire_client_certificate(store: CertificateStore, tcti: str) -> None:
    """Re-issue the store's client certificate (same TPM key, same CA) with dates in the past."""
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
    assert expired.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cert_path.write_bytes(expired.public_bytes(serialization.Encoding.PEM))


def test_an_expired_client_certificate_is_said_so(store_and_agent, test_tpm):
    """The agent answers an expired certificate with the "certificate expired" alert: the client
    names that, where it used to blame the agent's --ca (any text with "certificate" did)."""
    store, port, agent = store_and_agent
    _expire_client_certificate(store, test_tpm.tcti)
    proc = tpmtls_cli("enroll", f"127.0.0.1:{port}", "--store", str(store.root), "--expect-fingerprint",
                      agent.fingerprint(), env=test_tpm.env, check=False)
    line = one_line(proc)
    assert line.startswith(f"tpmtls: 127.0.0.1:{port}: the agent refused our client certificate as expired"), line
    assert " expired on " in line and "client.crt" in line, line
    assert "is its --ca the CA" not in line, line
    assert not (store.root / "servers" / f"127.0.0.1:{port}" / "server.crt").exists()


def test_a_port_that_is_not_tls_is_not_a_refusal(test_tpm, tmp_path):
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
