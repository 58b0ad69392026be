"""Server names that are IP addresses verify against IP SANs (IPv4 and IPv6), on both TLS paths.

Against real `openssl s_server` on 127.0.0.1 and ::1 with a certificate whose SANs are
`DNS:localhost, IP:127.0.0.1, IP:::1`, signed by the test CA.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import struct
import subprocess
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import tpmtls
from support.commands import require
from support.peers import clean_env
from support.tls_clients import client_subject
from tpmtls.testing import free_port


@pytest.fixture(scope="module")
def ip_cert(pki):
    """A server certificate naming localhost, 127.0.0.1 and ::1 (and nothing else)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ip server")]))
        .issuer_name(pki.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]), critical=False)
        .sign(pki.key, hashes.SHA256())
    )
    cert_path, key_path = pki.dir / "ip-server.crt", pki.dir / "ip-server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture(scope="module", params=["127.0.0.1", "::1"])
def server(request, pki, ip_cert):
    """`openssl s_server -www` requiring client certificates, on one loopback address."""
    require("openssl")
    address = request.param
    port = free_port()
    log = pki.dir / f"s_server-ip-{port}.log"
    accept = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    proc = subprocess.Popen(
        ["openssl", "s_server", "-accept", accept, "-cert", str(ip_cert[0]), "-key", str(ip_cert[1]),
         "-CAfile", str(pki.ca_file), "-Verify", "1", "-verify_return_error", "-www", "-naccept", "1000"],
        stdout=open(log, "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=clean_env(),
        start_new_session=True)
    deadline = time.monotonic() + 10
    while b"ACCEPT" not in log.read_bytes():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.02)
    yield address, port
    proc.terminate()
    proc.wait(10)


def pyopenssl_get(ctx, address: str, port: int) -> bytes:
    from OpenSSL import SSL

    raw = socket.create_connection((address, port), timeout=20)
    raw.settimeout(None)  # pyOpenSSL wants a blocking socket; SO_RCVTIMEO bounds every read
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 20, 0))
    conn = SSL.Connection(ctx, raw)
    conn.set_connect_state()
    try:
        conn.do_handshake()
        conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
        chunks = []
        while True:
            try:
                chunks.append(conn.recv(65536))
            except (SSL.ZeroReturnError, SSL.SysCallError):
                break
        return b"".join(chunks)
    finally:
        conn.close()
        raw.close()


def stdlib_get(ctx, address: str, port: int, name: str) -> bytes:
    with socket.create_connection((address, port), timeout=20) as raw:
        with ctx.wrap_socket(raw, server_hostname=name) as tls:
            tls.sendall(b"GET / HTTP/1.0\r\n\r\n")
            chunks = []
            while data := tls.recv(65536):
                chunks.append(data)
            return b"".join(chunks)


def test_pyopenssl_ip_address_verifies_against_ip_san(server, tpm_client, pki, test_tpm):
    address, port = server
    cert, key = tpm_client["ecc-p256"]
    ctx = tpmtls.pyopenssl_context(cert, key, pki.ca_file, hostname=address, tcti=test_tpm.tcti)
    assert client_subject(pyopenssl_get(ctx, address, port)) == "CN=tpm-client-ecc-p256"


def test_pyopenssl_dns_name_still_verifies(server, tpm_client, pki, test_tpm):
    address, port = server
    cert, key = tpm_client["ecc-p256"]
    ctx = tpmtls.pyopenssl_context(cert, key, pki.ca_file, hostname="localhost", tcti=test_tpm.tcti)
    assert client_subject(pyopenssl_get(ctx, address, port)) == "CN=tpm-client-ecc-p256"


@pytest.mark.parametrize("wrong", ["127.0.0.2", "::2", "wrong.example"])
def test_pyopenssl_other_name_or_address_is_refused_in_the_handshake(wrong, server, tpm_client, pki, test_tpm):
    from OpenSSL import SSL

    address, port = server
    cert, key = tpm_client["ecc-p256"]
    ctx = tpmtls.pyopenssl_context(cert, key, pki.ca_file, hostname=wrong, tcti=test_tpm.tcti)
    with pytest.raises(SSL.Error) as err:  # what pyOpenSSL callers already catch ...
        pyopenssl_get(ctx, address, port)
    assert isinstance(err.value, tpmtls.TpmtlsError)  # ... and a tpmtls error naming the mismatch
    assert f"does not match {wrong!r}" in str(err.value)


def test_stdlib_ip_address_verifies_against_ip_san(server, tpm_client, pki, test_tpm):
    address, port = server
    cert, key = tpm_client["rsa2048"]
    ctx = tpmtls.ssl_context(cert, key, pki.ca_file, tcti=test_tpm.tcti)
    assert client_subject(stdlib_get(ctx, address, port, address)) == "CN=tpm-client-rsa2048"
    other = "127.0.0.2" if "." in address else "::2"
    with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
        stdlib_get(ctx, address, port, other)


def test_pyopenssl_rejects_unusable_hostnames(tpm_client, pki, test_tpm):
    cert, key = tpm_client["ecc-p256"]
    for bad in ("", "two words", "nul\0byte"):
        with pytest.raises(tpmtls.TpmtlsError):
            tpmtls.pyopenssl_context(cert, key, pki.ca_file, hostname=bad, tcti=test_tpm.tcti)
