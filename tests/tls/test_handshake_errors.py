"""A handshake that fails because the TPM cannot sign names the TPM's reason, on every stdlib
entry point (sockets, requests, asyncio), and stays an `ssl.SSLError`; `tpmtls connect`
says truthfully what signed and why a server refused our certificate.

The outage is real: the test's own tpm2-abrmd is killed (fresh_tpm), and the peer is
`openssl s_server` requiring client certificates.
"""

from __future__ import annotations

import asyncio
import datetime
import ssl

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import tpmtls
from support.peers import OpenSSLServer, Pki
from support.tls_clients import client_subject, stdlib_get
from tpmtls import provider
from tpmtls.errors import HandshakeError
from tpmtls.tpm import default_pool


@pytest.fixture
def outage(fresh_tpm, tmp_path):
    """Contexts of a TPM client key whose resource manager is then killed: (ctx, session, server, tcti)."""
    pki = Pki(tmp_path / "pki")
    key = tpmtls.connect(fresh_tpm.tcti).create_key("ecc-p256", tmp_path / "k.key")
    cert = pki.issue(key.public_key(), "outage", "k.crt")
    with OpenSSLServer(pki) as server:
        # No resumption: a resumed handshake needs no TPM, so the outage would not show.
        ctx = tpmtls.ssl_context(cert, tmp_path / "k.key", pki.ca_file, tcti=fresh_tpm.tcti, resume=False)
        session = tpmtls.requests_session(cert, tmp_path / "k.key", pki.ca_file, tcti=fresh_tpm.tcti, resume=False)
        pyopenssl_ctx = tpmtls.pyopenssl_context(cert, tmp_path / "k.key", pki.ca_file, hostname="localhost",
                                                 tcti=fresh_tpm.tcti, resume=False)
        assert client_subject(stdlib_get(ctx, server.port)) == "CN=outage"  # works while the TPM is there
        default_pool(fresh_tpm.tcti).reconnect_timeout = 0.5  # fail fast once it is gone
        fresh_tpm.abrmd.kill()
        with session:
            yield ctx, session, server, fresh_tpm.tcti, pyopenssl_ctx
    default_pool(fresh_tpm.tcti).close()


def assert_names_the_tpm(err: BaseException, tcti: str) -> None:
    assert isinstance(err, ssl.SSLError) and isinstance(err, HandshakeError), repr(err)
    text = str(err)
    assert text.startswith("TLS handshake failed: ") and tcti in text and "\n" not in text, text
    assert "EVP lib" not in text


def test_socket_handshake_error_names_the_tpm(outage):
    ctx, _, server, tcti, _ = outage
    with pytest.raises(ssl.SSLError) as err:
        stdlib_get(ctx, server.port)
    assert_names_the_tpm(err.value, tcti)


def test_requests_error_names_the_tpm(outage):
    _, session, server, tcti, _ = outage
    with pytest.raises(requests.exceptions.SSLError) as err:  # what requests callers catch ...
        session.get(f"https://localhost:{server.port}/", timeout=20)
    assert isinstance(err.value, HandshakeError)  # ... and a tpmtls error
    assert str(err.value).startswith(f"https://localhost:{server.port}/: TLS handshake failed: ")
    assert tcti in str(err.value) and "\n" not in str(err.value)


def test_asyncio_error_names_the_tpm(outage):
    ctx, _, server, tcti, _ = outage

    async def connect() -> None:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", server.port, ssl=ctx, server_hostname="localhost"), 20)
        writer.close()

    with pytest.raises(ssl.SSLError) as err:
        asyncio.run(connect())
    assert_names_the_tpm(err.value, tcti)


def test_the_diagnosis_says_the_tpm_failed(outage):
    """tls/diagnosis.py reads the outage as the TPM's failure, inside requests' wrappers too."""
    from tpmtls.tls.diagnosis import Cause, diagnose

    ctx, session, server, tcti, _ = outage
    with pytest.raises(ssl.SSLError) as plain:
        stdlib_get(ctx, server.port)
    with pytest.raises(requests.exceptions.SSLError) as wrapped:
        session.get(f"https://localhost:{server.port}/", timeout=20)
    for error in (plain.value, wrapped.value):
        found = diagnose(error)
        assert found.cause is Cause.TPM and tcti in found.reason, found


def test_pyopenssl_last_error_names_the_tpm(outage):
    """pyOpenSSL's SSL.Error carries OpenSSL codes only; last_error() on the thread has the reason."""
    from OpenSSL import SSL

    from support.tls_clients import pyopenssl_get

    _, _, server, tcti, ctx = outage
    with pytest.raises(SSL.Error):
        pyopenssl_get(ctx, server.port)
    assert tcti in (provider.last_error() or "")


def test_pyopenssl_stale_tpm_failure_is_reset_at_handshake_start(tpm_client, pki, s_server, test_tpm, tmp_path):
    from OpenSSL import SSL

    from support.tls_clients import pyopenssl_get

    pw_key = tmp_path / "pw.key"
    tpmtls.connect(test_tpm.tcti).create_key("ecc-p256", pw_key, password="x")
    cert, key = tpm_client["ecc-p256"]
    ctx = tpmtls.pyopenssl_context(cert, key, pki.ca_file, hostname="wrong.example", tcti=test_tpm.tcti)
    with pytest.raises(tpmtls.TlsSetupError):
        tpmtls.pyopenssl_context(cert, pw_key, pki.ca_file, hostname="localhost", tcti=test_tpm.tcti)
    assert provider.last_error()  # a failure recorded on this thread ...
    with pytest.raises(SSL.Error):
        pyopenssl_get(ctx, s_server.port)
    assert provider.last_error() is None  # ... is not this handshake's reason


def test_a_stale_tpm_failure_is_never_blamed(tpm_client, pki, s_server, test_tpm, tmp_path):
    """A TPM failure recorded earlier on this thread does not relabel a later, unrelated failure."""
    pw_key = tmp_path / "pw.key"
    tpmtls.connect(test_tpm.tcti).create_key("ecc-p256", pw_key, password="x")
    cert, key = tpm_client["ecc-p256"]
    with pytest.raises(tpmtls.TlsSetupError):
        tpmtls.ssl_context(cert, pw_key, pki.ca_file, tcti=test_tpm.tcti)  # records a failure on this thread
    assert provider.last_error()
    ctx = tpmtls.ssl_context(cert, key, pki.ca_file, tcti=test_tpm.tcti)
    with pytest.raises(ssl.SSLCertVerificationError) as err:
        stdlib_get(ctx, s_server.port, host="wrong.example")
    assert not isinstance(err.value, tpmtls.TpmtlsError)


# ---- tpmtls connect: what signed, and why a server refused us ----


def expired_certificate(pki: Pki, public_key, name: str) -> str:
    """A client certificate from the test CA that expired yesterday."""
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "expired")]))
        .issuer_name(pki.cert.subject).public_key(public_key).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=10)).not_valid_after(now - datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(pki.key, hashes.SHA256())
    )
    path = pki.dir / name
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(path)


@pytest.mark.parametrize("version", ["--tls1.2", "--tls1.3"])
def test_connect_diagnoses_an_expired_client_certificate(version, cli, tpm_client, pki, s_server):
    cert, key = tpm_client["ecc-p256"]
    public = x509.load_pem_x509_certificate(cert.read_bytes()).public_key()
    expired = expired_certificate(pki, public, "expired-client.crt")
    line = cli.fails("connect", f"127.0.0.1:{s_server.port}", "--cert", expired, "--key", str(key),
                     "--cafile", str(pki.ca_file), "--servername", "localhost", version)
    assert "refused our client certificate" in line and f"{expired} expired on " in line, line
    assert "does not trust the CA" not in line


def test_connect_with_a_software_key_does_not_claim_the_tpm(cli, pki, s_server, tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    key_path = tmp_path / "software.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert = pki.issue(key.public_key(), "software", "software-connect.crt")
    out = cli("connect", f"127.0.0.1:{s_server.port}", "--cert", str(cert), "--key", str(key_path),
              "--cafile", str(pki.ca_file), "--servername", "localhost").stdout
    assert f"client key: {key_path}, a software key (not in the TPM)" in out
    assert "in the TPM)" not in out.replace("(not in the TPM)", "")
    assert "peer: commonName=localhost" in out



def test_injected_plain_ssl_handshake_error_names_the_tpm(fresh_tpm, tmp_path):
    """After inject_into_ssl(), contexts made by anyone (here: plain ssl) say why too; extract undoes it."""
    pki = Pki(tmp_path / "pki")
    key = tpmtls.connect(fresh_tpm.tcti).create_key("ecc-p256", tmp_path / "k.key")
    cert = pki.issue(key.public_key(), "injected", "k.crt")
    tpmtls.inject_into_ssl(fresh_tpm.tcti)
    try:
        ctx = ssl.create_default_context(cafile=str(pki.ca_file))
        ctx.load_cert_chain(str(cert), str(tmp_path / "k.key"))
        with OpenSSLServer(pki) as server:
            assert client_subject(stdlib_get(ctx, server.port)) == "CN=injected"
            default_pool(fresh_tpm.tcti).reconnect_timeout = 0.5
            fresh_tpm.abrmd.kill()
            with pytest.raises(ssl.SSLError) as err:
                stdlib_get(ctx, server.port)
    finally:
        tpmtls.extract_from_ssl()
        default_pool(fresh_tpm.tcti).close()
    assert_names_the_tpm(err.value, fresh_tpm.tcti)
    assert ssl.SSLContext.sslsocket_class is ssl.SSLSocket and "load_cert_chain" not in vars(ssl.SSLContext)
