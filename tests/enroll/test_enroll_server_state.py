"""State that outlives a process: restarts (and a crash) mid-enrollment, migrations, two servers on one PostgreSQL.

Before, everything lived in memory: a restart between /attest and /secret or between order
and finalize lost the enrollment, and two instances could share nothing.
"""

from __future__ import annotations

import datetime
import sqlite3
import threading

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from support.attest import enroll_machine
from support.commands import require
from support.enroll_server import RoundRobinNginx, ServerProcess, kill
from tpmtls.enroll.acme_client import Enroller, EnrollOptions
from tpmtls.enroll.attest_errors import EnrollError
from tpmtls.enroll.attestation import attest_request, credential_from_reply, pcr_selection, post_json, secret_request
from tpmtls.enroll.state import Order
from tpmtls.enroll.state_sql import SCHEMA_VERSION, open_store
from tpmtls.pki.ca import FileCA
from tpmtls.testing import free_port
from tpmtls.tpm import attest


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    require("swtpm", "swtpm_setup", "swtpm_localca", "tpm2-abrmd")
    tmp = tmp_path_factory.mktemp("state")
    with enroll_machine(tmp) as m:
        yield tmp, m.machine, m.tpm, m.server_args, m.ca_dir


class Restarting(Enroller):
    """Restarts the server between /attest and /secret (a crash: SIGKILL) and between order and finalize (SIGTERM)."""

    def __init__(self, tpm, options, restart) -> None:  # type: ignore[no-untyped-def]
        super().__init__(tpm, options)
        self.restart = restart

    def ak_credential(self):  # type: ignore[no-untyped-def]
        s = requests.Session()
        s.verify = self.o.cafile
        base = self.attestation_url()
        ek, ak = attest.read_ek(self.tpm), attest.create_ak(self.tpm)
        answer = post_json(s, base + "/attest", attest_request(self.tpm, ek, ak))
        self.restart(crash=True)
        reply = post_json(s, base + "/secret", secret_request(self.tpm, ak, answer, base, "rsa"))
        return credential_from_reply(ak, reply, base, pcr_selection(answer, base))

    def csr(self, key, identifier):  # type: ignore[no-untyped-def]
        self.restart(crash=False)  # the order is ready; finalize goes to the new process
        return super().csr(key, identifier)


def test_restart_between_attest_and_secret_and_between_order_and_finalize(world, tmp_path):
    tmp, machine, tpm, args, ca_dir = world
    listen = f"127.0.0.1:{free_port()}"
    servers = [ServerProcess(machine.env, tmp, *args, listen=listen)]

    def restart(crash: bool) -> None:
        old = servers[-1]
        if crash:
            kill(old)
        else:
            assert old.stop() == 0
        servers.append(ServerProcess(machine.env, tmp, *args, listen=listen))

    try:
        result = Restarting(tpm, EnrollOptions(servers[0].directory, cafile=str(ca_dir / "ca.crt"),
                                               key_out=tmp_path / "k", cert_out=tmp_path / "c"), restart).run()
    finally:
        codes = [s.stop() for s in servers]
    assert len(servers) == 3 and codes[1:] == [0, 0]
    assert result.certificate.subject == x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, result.identifier)])
    store = open_store(None, ca_dir)
    record = store.certificate(f"{result.certificate.serial_number:x}")
    assert record is not None and record.ek == result.identifier and record.revoked_at is None
    store.close()
    assert "Traceback" not in servers[-1].log.read_text()


def test_sqlite_file_schema_and_newer_schema_refused(tmp_path):
    store = open_store("sqlite:state.db", tmp_path)
    assert (tmp_path / "state.db").stat().st_mode & 0o777 == 0o600
    conn = sqlite3.connect(tmp_path / "state.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT version FROM tpmtls_schema").fetchone()[0] == SCHEMA_VERSION
    store.close()
    store = open_store("sqlite:state.db", tmp_path)  # reopening migrates nothing
    store.close()
    conn.execute("UPDATE tpmtls_schema SET version = ?", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(EnrollError, match=f"schema version {SCHEMA_VERSION + 1} is newer than this tpmtls knows"):
        open_store("sqlite:state.db", tmp_path)
    with pytest.raises(EnrollError, match="write sqlite:PATH or postgresql://"):
        open_store("mysql://x", tmp_path)


def test_revoked_key_is_refused_at_renewal(world, tmp_path):
    """Certificates are recorded by serial with their EK: revoking one refuses renewing its key
    (docs/enrollment-server.md, "For revocation")."""
    tmp, machine, tpm, args, ca_dir = world
    server = ServerProcess(machine.env, tmp, *args, "--db", f"sqlite:{tmp_path / 'revoke.db'}")
    try:
        opts = EnrollOptions(server.directory, cafile=str(ca_dir / "ca.crt"), key_out=tmp_path / "k",
                             cert_out=tmp_path / "c")
        first = Enroller(tpm, opts).run()
        store = open_store(f"sqlite:{tmp_path / 'revoke.db'}", ca_dir)
        assert store.revoke(f"{first.certificate.serial_number:x}", "keyCompromise", 0.0)
        store.close()
        opts.renew = True
        with pytest.raises(EnrollError, match=r"refused \(unauthorized\): this key's certificate \w+ was revoked "
                                              r"\(keyCompromise\): enroll a new key"):
            Enroller(tpm, opts).run()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def postgres():
    from tpmtls.lab.postgres import Postgres, pg_binary

    try:
        for binary in ("initdb", "postgres", "pg_isready", "psql"):  # PATH or /usr/lib/postgresql/N/bin
            pg_binary(binary)
    except FileNotFoundError:
        pytest.skip("PostgreSQL is not installed (run 'make setup')")
    with Postgres() as pg:
        yield pg


def test_two_stores_on_one_postgresql_never_spend_twice(postgres):
    a, b = open_store(postgres.url, "/"), open_store(postgres.url, "/")
    try:
        a.add_nonce("n-shared", 4e9, 1000)
        assert b.take_nonce("n-shared") == 4e9 and a.take_nonce("n-shared") is None
        a.add_order(Order("o-race", "acct", "id", 4e9, "z-race", "tok"))
        wins: list[bool] = []

        def answer(store) -> None:  # type: ignore[no-untyped-def]
            wins.append(store.update_order("o-race", {"authz_status": "pending"}, authz_status="processing"))

        threads = [threading.Thread(target=answer, args=(s,)) for s in (a, b, a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(wins) == [False, False, False, True]
    finally:
        a.close()
        b.close()


def test_store_reconnects_after_postgresql_restarts(postgres):
    store = open_store(postgres.url, "/")
    try:
        store.add_nonce("before-restart", 4e9, 1000)
        postgres.stop()
        with pytest.raises(EnrollError, match="database unavailable|cannot connect to PostgreSQL"):
            store.take_nonce("before-restart")  # one clear line while it is down
        postgres.start()
        assert store.take_nonce("before-restart") == 4e9  # reconnected; the committed nonce survived
    finally:
        store.close()


def test_two_servers_on_one_postgresql_serve_one_enrollment_alternately(world, postgres, tmp_path):
    """NGINX sends each request to the next server: /attest to one, /secret to the other, and so on."""
    require("nginx")
    tmp, machine, tpm, args, ca_dir = world
    front, ports = free_port(), [free_port(), free_port()]
    public = f"https://localhost:{front}"
    ca = FileCA.open(ca_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = ca.issue_for(key.public_key(), x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]), server=True,
                        sans=["DNS:localhost"], lifetime=datetime.timedelta(days=1))
    (tmp_path / "lb.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
    (tmp_path / "lb.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    servers = [ServerProcess(machine.env, tmp, *args, "--db", postgres.url, "--public-url", public,
                             listen=f"127.0.0.1:{p}", log_name=f"pg-server-{i}.log") for i, p in enumerate(ports)]
    lb = RoundRobinNginx(tmp_path / "nginx", front, ports, tmp_path / "lb.crt", tmp_path / "lb.key", ca_dir / "ca.crt")
    try:
        assert servers[0].directory == servers[1].directory == public + "/acme/directory"
        result = Enroller(tpm, EnrollOptions(public + "/acme/directory", cafile=str(ca_dir / "ca.crt"),
                                             key_out=tmp_path / "k", cert_out=tmp_path / "c")).run()
    finally:
        lb.stop()
        codes = [s.stop() for s in servers]
    assert codes == [0, 0]
    log = lb.requests()
    upstreams = {u for _, _, u, _ in log}
    assert upstreams == {f"127.0.0.1:{p}" for p in ports}, log
    by_path = {path: upstream for _, path, upstream, _ in log}
    assert by_path["/attest"] != by_path["/secret"], log
    finalize = next(u for _, p, u, _ in log if p.endswith("/finalize"))
    new_order = next(u for _, p, u, _ in log if p == "/acme/new-order")
    assert {finalize, new_order} <= upstreams
    assert all(status in ("200", "201", "204") for _, _, _, status in log), log
    assert result.certificate.subject == x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, result.identifier)])
    store = open_store(postgres.url, "/")
    assert store.certificate(f"{result.certificate.serial_number:x}") is not None
    store.close()
