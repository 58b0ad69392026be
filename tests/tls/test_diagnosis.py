"""One diagnosis of TLS failures, checked against the errors real peers produce.

Every error here comes from a real exchange on loopback: `openssl s_server -Verify`,
docker-registry (Go's TLS server), NGINX judging client certificates after the handshake,
the docker CLI (Go's TLS client), a plain HTTP server, a silent listener, a closed port, a
peer that hangs up after the handshake (a TPM that cannot sign: test_handshake_errors.py,
beside the other outage tests). Each client library wraps them its own way (stdlib,
urllib3, requests, pyOpenSSL); the cause must not depend on it.
"""

from __future__ import annotations

import datetime
import socket
import ssl
import struct
import subprocess
import threading
import types
from pathlib import Path

import pytest
import requests
import urllib3
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import tpmtls
from support.commands import require
from support.peers import CountingListener, OpenSSLServer, Pki
from support.tls_clients import pyopenssl_get
from tpmtls.lab.process import child_env
from tpmtls.testing import free_port
from tpmtls.tls.diagnosis import Cause, diagnose, diagnose_response, diagnose_text

CLIENTS = ["stdlib", "urllib3", "requests", "pyopenssl"]
#: Each client library with each TLS version it can pin (requests cannot).
CLIENTS_AND_VERSIONS = [("stdlib", "1.2"), ("stdlib", "1.3"), ("urllib3", "1.2"), ("urllib3", "1.3"),
                        ("requests", None), ("pyopenssl", "1.2"), ("pyopenssl", "1.3")]


# ---- certificates and peers ------------------------------------------------------------------


def _certificate(pki: Pki, public_key, name: str, filename: str, *, server: bool, start_days: float = -1,
                 end_days: float = 2, names: tuple[str, ...] = ()) -> Path:
    now = datetime.datetime.now(datetime.timezone.utc)
    eku = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(pki.cert.subject).public_key(public_key).serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(days=start_days))
        .not_valid_after(now + datetime.timedelta(days=end_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
    path = pki.dir / filename
    path.write_bytes(builder.sign(pki.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    return path


def _write_key(path: Path):
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return key


@pytest.fixture(scope="module")
def certs(pki, tmp_path_factory):
    """Client and server certificates that are wrong in one way each."""
    work = tmp_path_factory.mktemp("diagnosis")
    other = Pki(work / "other", cn="a CA nobody here trusts")
    key_path = pki.dir / "diagnosis-client.key"
    key = _write_key(key_path)
    server_key_path = pki.dir / "diagnosis-server.key"
    server_key = _write_key(server_key_path)
    return types.SimpleNamespace(
        other=other,
        good=(_certificate(pki, key.public_key(), "good", "diagnosis-good.crt", server=False), key_path),
        stranger=other.software_client("stranger"),
        expired=(_certificate(pki, key.public_key(), "expired", "diagnosis-expired.crt", server=False,
                              start_days=-10, end_days=-1), key_path),
        future=(_certificate(pki, key.public_key(), "future", "diagnosis-future.crt", server=False,
                             start_days=1, end_days=10), key_path),
        server_key=server_key_path,
        server_expired=_certificate(pki, server_key.public_key(), "localhost", "diagnosis-srv-expired.crt",
                                    server=True, start_days=-10, end_days=-1, names=("localhost",)),
        server_future=_certificate(pki, server_key.public_key(), "localhost", "diagnosis-srv-future.crt",
                                   server=True, start_days=1, end_days=10, names=("localhost",)),
        server_elsewhere=_certificate(pki, server_key.public_key(), "elsewhere", "diagnosis-srv-elsewhere.crt",
                                      server=True, names=("elsewhere.example",)),
    )


def _server_with(pki: Pki, cert: Path, key: Path) -> OpenSSLServer:
    """`openssl s_server` presenting `cert` (no client certificates asked)."""
    return OpenSSLServer(types.SimpleNamespace(dir=pki.dir, server_cert=cert, server_key=key, ca_file=pki.ca_file),
                         verify_client=False)


class HangUpServer:
    """Completes the TLS handshake, reads the request, then resets the connection without a
    word (no alert, no close_notify): what a client sees when a server drops it right after
    the handshake."""

    def __init__(self, pki: Pki) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(pki.server_cert), str(pki.server_key))
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self.sock.accept()
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                return
            raw.settimeout(10)
            try:
                tls = self.context.wrap_socket(raw, server_side=True)
                tls.recv(1)  # the client is now waiting for an answer
                tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                tls.close()  # linger 0: a reset, not a clean end
            except OSError:
                raw.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


# ---- clients: one request, the exception it raised --------------------------------------


def _stdlib_context(pki: Pki, cert=None, key=None, cafile=None, tls: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cafile or pki.ca_file))
    if cert:
        ctx.load_cert_chain(str(cert), str(key))
    if tls == "1.2":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    elif tls == "1.3":
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def failure(kind: str, pki: Pki, port: int, *, cert=None, key=None, cafile=None, host: str = "localhost",
            tls: str | None = None, timeout: float = 20) -> BaseException:
    """The exception one GET over TLS raised, with the client library `kind`."""
    try:
        if kind == "stdlib":
            ctx = _stdlib_context(pki, cert, key, cafile, tls)
            with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
                # a ragged EOF is an error here, as http.client makes it one for the HTTP libraries
                with ctx.wrap_socket(raw, server_hostname=host, suppress_ragged_eofs=False) as conn:
                    conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
                    while conn.recv(65536):
                        pass
        elif kind == "urllib3":
            ctx = _stdlib_context(pki, cert, key, cafile, tls)
            with urllib3.HTTPSConnectionPool("127.0.0.1", port, ssl_context=ctx, server_hostname=host,
                                             assert_hostname=host, retries=False, timeout=timeout) as pool:
                pool.urlopen("GET", "/", headers={"Host": host}, redirect=False, assert_same_host=False)
        elif kind == "requests":
            assert tls is None and host == "localhost"
            requests.get(f"https://localhost:{port}/", verify=str(cafile or pki.ca_file), timeout=timeout,
                         cert=(str(cert), str(key)) if cert else None)
        elif kind == "pyopenssl":
            ctx = tpmtls.pyopenssl_context(cert, key, cafile or pki.ca_file, hostname=host, tls_version=tls,
                                           resume=False)
            pyopenssl_get(ctx, port, host)
        else:  # pragma: no cover
            raise AssertionError(kind)
    except Exception as e:  # noqa: BLE001 - any failure is what is being classified
        return e
    raise AssertionError(f"{kind}: the exchange with port {port} did not fail")


# ---- the peer is not what we expect ----------------------------------------------------------


@pytest.mark.parametrize("kind", CLIENTS)
def test_a_plain_http_peer_is_not_tls(kind, pki):
    listener = CountingListener("http")
    try:
        found = diagnose(failure(kind, pki, listener.port))
    finally:
        listener.close()
    assert found.cause is Cause.NOT_TLS, found


@pytest.mark.parametrize("kind", CLIENTS)
def test_a_server_from_another_ca_is_untrusted(kind, pki, certs, s_server):
    good_cert, good_key = certs.good
    found = diagnose(failure(kind, pki, s_server.port, cert=good_cert, key=good_key, cafile=certs.other.ca_file))
    assert found.cause is Cause.UNTRUSTED, found
    assert "certificate verify failed" in found.reason


@pytest.mark.parametrize("kind", CLIENTS)
def test_a_certificate_for_another_name_is_a_name_mismatch(kind, pki, certs):
    with _server_with(pki, certs.server_elsewhere, certs.server_key) as server:
        found = diagnose(failure(kind, pki, server.port))
    assert found.cause is Cause.NAME_MISMATCH, found
    if kind == "urllib3":  # urllib3's own check lists the names the certificate holds
        assert found.names == "elsewhere.example"


@pytest.mark.parametrize("kind", ["stdlib", "urllib3", "requests"])
@pytest.mark.parametrize("which", ["expired", "future"])
def test_their_certificate_out_of_its_dates(kind, which, pki, certs):
    cert = certs.server_expired if which == "expired" else certs.server_future
    with _server_with(pki, cert, certs.server_key) as server:
        found = diagnose(failure(kind, pki, server.port))
    assert (found.cause, found.ours, found.not_yet_valid) == (Cause.EXPIRED, False, which == "future"), found


# ---- the peer refuses us ---------------------------------------------------------------------


@pytest.mark.parametrize("kind, tls", CLIENTS_AND_VERSIONS)
@pytest.mark.parametrize("client", ["stranger", "none"])
def test_s_server_refusing_our_certificate(kind, tls, client, pki, certs, s_server):
    cert, key = certs.stranger if client == "stranger" else (None, None)
    found = diagnose(failure(kind, pki, s_server.port, cert=cert, key=key, tls=tls), ours=cert)
    assert found.cause is Cause.REFUSED and found.refused, found
    if client == "stranger":
        assert found.alert == "unknown ca", found
    else:  # TLS 1.2 has no alert for it: OpenSSL 3 says handshake failure; 1.3 has one
        assert found.alert == ("certificate required" if tls != "1.2" else "handshake failure"), found


@pytest.mark.parametrize("kind, tls", CLIENTS_AND_VERSIONS)
def test_go_server_refusing_our_certificate(kind, tls, pki, certs, registry):
    """Go sends "bad certificate". In TLS 1.3 it judges our certificate after the handshake, so a
    client already writing its request may find the connection closed before it reads the alert
    (urllib3 and requests do so here every run, the stdlib socket sometimes): that is "closed
    after handshake", which every caller treats as a possible refusal. Over TLS 1.2 the alert
    ends the handshake and is always read (and s_server's TLS 1.3 alerts, which come before
    the handshake ends, are: test_s_server_refusing_our_certificate)."""
    cert, key = certs.stranger
    found = diagnose(failure(kind, pki, registry.port, cert=cert, key=key, tls=tls))
    if tls != "1.2" and found.cause is Cause.CLOSED:
        return  # (its reason is the library's own words for an EOF)
    assert (found.cause, found.alert) == (Cause.REFUSED, "bad certificate"), found
    assert found.reason == ("tls alert bad certificate" if kind == "pyopenssl" else "sslv3 alert bad certificate")


@pytest.mark.parametrize("kind, tls", [("stdlib", "1.2"), ("stdlib", "1.3"), ("pyopenssl", "1.2")])
def test_our_expired_certificate_is_told_from_other_refusals(kind, tls, pki, certs, s_server):
    cert, key = certs.expired
    error = failure(kind, pki, s_server.port, cert=cert, key=key, tls=tls)
    found = diagnose(error)  # s_server says "certificate expired": ours, even without our file
    assert (found.cause, found.ours, found.refused) == (Cause.EXPIRED, True, True), found
    found = diagnose(error, ours=cert)
    assert found.dates.startswith(f"{cert} expired on ") and found.dates.endswith(" UTC"), found


def test_our_certificate_not_yet_valid_needs_its_dates(pki, certs, s_server):
    """s_server answers a certificate that is not valid yet with "bad certificate": only our
    file's dates tell why."""
    cert, key = certs.future
    error = failure("urllib3", pki, s_server.port, cert=cert, key=key)
    assert diagnose(error).cause is Cause.REFUSED
    found = diagnose(error, ours=cert)
    assert (found.cause, found.ours, found.not_yet_valid) == (Cause.EXPIRED, True, True), found
    assert found.dates.startswith(f"{cert} is not valid before ")


def test_our_certificate_file_is_read_bounded(pki, certs, s_server, tmp_path):
    """The file named as ours is read like every input (at most 16 MiB): /dev/zero, a directory or
    a missing file add no dates to the diagnosis, and never hang it."""
    from tpmtls.tls.diagnosis import certificate_dates

    cert, key = certs.expired
    error = failure("urllib3", pki, s_server.port, cert=cert, key=key)
    for ours in ("/dev/zero", tmp_path, tmp_path / "missing.crt"):
        assert certificate_dates(ours) is None
        found = diagnose(error, ours=ours)
        assert (found.cause, found.dates) == (Cause.EXPIRED, ""), found


def test_go_server_refusing_an_expired_certificate(pki, certs, registry):
    cert, key = certs.expired
    error = failure("urllib3", pki, registry.port, cert=cert, key=key)
    assert diagnose(error).cause is Cause.REFUSED  # Go says "bad certificate" ...
    assert diagnose(error, ours=cert).cause is Cause.EXPIRED  # ... our file says why


def test_nginx_judges_our_certificate_after_the_handshake(pki, certs, tmp_path):
    require("nginx")
    from support.nginx import registry_front

    nginx = registry_front(tmp_path / "nginx", pki.server_cert, pki.server_key, pki.ca_file, free_port())
    try:
        answers = {}
        for label, (cert, key) in {"none": (None, None), "stranger": certs.stranger, "expired": certs.expired,
                                   "good": certs.good}.items():
            ctx = _stdlib_context(pki, cert, key)
            with urllib3.HTTPSConnectionPool("127.0.0.1", nginx.port, ssl_context=ctx, server_hostname="localhost",
                                             assert_hostname="localhost", retries=False, timeout=20) as pool:
                resp = pool.urlopen("GET", "/v2/", headers={"Host": "localhost"})
                answers[label] = (resp.status, resp.data, cert)
    finally:
        nginx.stop()
    status, body, _ = answers["none"]
    found = diagnose_response(status, body)
    assert status == 400 and found is not None and found.cause is Cause.REFUSED, (status, body)
    assert found.reason == "HTTP 400: no required ssl certificate was sent"
    status, body, _ = answers["stranger"]
    found = diagnose_response(status, body)
    assert found is not None and found.cause is Cause.REFUSED and "ssl certificate error" in found.reason
    status, body, cert = answers["expired"]
    found = diagnose_response(status, body, ours=cert)
    assert found is not None and (found.cause, found.ours) == (Cause.EXPIRED, True), found
    status, body, _ = answers["good"]  # accepted: NGINX's upstream is down, which is no certificate matter
    assert status == 502 and diagnose_response(status, body) is None


# ---- the connection itself ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["stdlib", "urllib3"])
def test_a_peer_hanging_up_after_the_handshake(kind, pki):
    server = HangUpServer(pki)
    try:
        found = diagnose(failure(kind, pki, server.port))
    finally:
        server.close()
    assert found.cause is Cause.CLOSED, found


@pytest.mark.parametrize("kind", ["stdlib", "urllib3", "requests"])
def test_a_silent_listener_times_out(kind, pki):
    listener = CountingListener("hold")
    try:
        found = diagnose(failure(kind, pki, listener.port, timeout=1))
    finally:
        listener.close()
    assert found.cause is Cause.TIMEOUT, found


@pytest.mark.parametrize("kind", ["stdlib", "urllib3", "requests", "pyopenssl"])
def test_a_closed_port_is_unreachable(kind, pki):
    found = diagnose(failure(kind, pki, free_port()))
    assert found.cause is Cause.UNREACHABLE and found.reason == "Connection refused", found


# ---- Go's words, as the docker CLI prints them -------------------------------------------


def _docker_cli(tmp: Path, port: int, ca: Path, cert: Path, key: Path, host: str = "localhost") -> str:
    env = child_env({"HOME": str(tmp), "DOCKER_CONFIG": str(tmp / "docker-config")})
    for name in ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONTEXT"):
        env.pop(name, None)
    proc = subprocess.run(["docker", "--tlsverify", f"--tlscacert={ca}", f"--tlscert={cert}", f"--tlskey={key}",
                           "-H", f"tcp://{host}:{port}", "version", "--format", "{{.Server.Version}}"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode != 0, proc.stdout
    return proc.stderr


def test_go_client_texts(pki, certs, s_server, registry, tmp_path):
    require("docker")
    good_cert, good_key = certs.good
    stranger_cert, stranger_key = certs.stranger
    expired_cert, expired_key = certs.expired
    cases = {
        "refused by s_server": (s_server.port, pki.ca_file, stranger_cert, stranger_key, "localhost"),
        "refused by Go": (registry.port, pki.ca_file, stranger_cert, stranger_key, "localhost"),
        "untrusted": (s_server.port, certs.other.ca_file, good_cert, good_key, "localhost"),
        "ours expired": (s_server.port, pki.ca_file, expired_cert, expired_key, "localhost"),
        "closed port": (free_port(), pki.ca_file, good_cert, good_key, "127.0.0.1"),
    }
    texts = {label: _docker_cli(tmp_path, *args) for label, args in cases.items()}
    with _server_with(pki, certs.server_elsewhere, certs.server_key) as server:
        texts["name"] = _docker_cli(tmp_path, server.port, pki.ca_file, good_cert, good_key)
    with _server_with(pki, certs.server_expired, certs.server_key) as server:
        texts["theirs expired"] = _docker_cli(tmp_path, server.port, pki.ca_file, good_cert, good_key)
    listener = CountingListener("http")
    try:
        texts["plain http"] = _docker_cli(tmp_path, listener.port, pki.ca_file, good_cert, good_key, "127.0.0.1")
    finally:
        listener.close()
    found = {label: diagnose_text(text) for label, text in texts.items()}
    assert found["refused by s_server"].cause is Cause.REFUSED, texts
    assert found["refused by Go"].reason == "remote error: tls: bad certificate", texts
    assert found["refused by Go"].cause is Cause.REFUSED
    assert found["untrusted"].cause is Cause.UNTRUSTED, texts
    assert (found["ours expired"].cause, found["ours expired"].ours) == (Cause.EXPIRED, True), texts
    assert found["ours expired"].alert == "certificate expired"  # Go says "expired certificate"
    assert found["closed port"].cause is Cause.UNREACHABLE, texts
    assert found["name"].cause is Cause.NAME_MISMATCH and found["name"].names == "elsewhere.example", texts
    assert (found["theirs expired"].cause, found["theirs expired"].ours) == (Cause.EXPIRED, False), texts
    assert found["plain http"].cause is Cause.NOT_TLS, texts
    assert diagnose_text(texts["refused by Go"], ours=stranger_cert).cause is Cause.REFUSED  # ours is in date
    assert diagnose_text(texts["ours expired"], ours=expired_cert).dates.startswith(f"{expired_cert} expired on ")
