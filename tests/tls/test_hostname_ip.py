"""Server names that are IP addresses verify against IP SANs (IPv4 and IPv6), on both TLS paths.

Against real `openssl s_server` on 127.0.0.1 and ::1 with a certificate whose SANs are
`DNS:localhost, IP:127.0.0.1, IP:::1`, signed by the test CA.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import tpmtls
from support.commands import require
from support.peers import OpenSSLServer
from support.tls_clients import client_subject, pyopenssl_get, stdlib_get


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
    """(address, port): `openssl s_server -www` requiring client certificates, on one loopback address."""
    require("openssl")
    with OpenSSLServer(pki, address=request.param, cert=ip_cert[0], key=ip_cert[1]) as s:
        yield s.address, s.port


def test_pyopenssl_ip_address_verifies_against_ip_san(server, tpm_client, pki, test_tpm):
    address, port = server
    cert, key = tpm_client["ecc-p256"]
    ctx = tpmtls.pyopenssl_context(cert, key, pki.ca_file, hostname=address, tcti=test_tpm.tcti)
    assert client_subject(pyopenssl_get(ctx, port, None, address=address)) == "CN=tpm-client-ecc-p256"


def test_pyopenssl_dns_name_still_verifies(server, tpm_client, pki, test_tpm):
    address, port = server
    cert, key = tpm_client["ecc-p256"]
    ctx = tpmtls.pyopenssl_context(cert, key, pki.ca_file, hostname="localhost", tcti=test_tpm.tcti)
    assert client_subject(pyopenssl_get(ctx, port, None, address=address)) == "CN=tpm-client-ecc-p256"


@pytest.mark.parametrize("wrong", ["127.0.0.2", "::2", "wrong.example"])
def test_pyopenssl_other_name_or_address_is_refused_in_the_handshake(wrong, server, tpm_client, pki, test_tpm):
    from OpenSSL import SSL

    address, port = server
    cert, key = tpm_client["ecc-p256"]
    ctx = tpmtls.pyopenssl_context(cert, key, pki.ca_file, hostname=wrong, tcti=test_tpm.tcti)
    with pytest.raises(SSL.Error) as err:  # what pyOpenSSL callers already catch ...
        pyopenssl_get(ctx, port, None, address=address)
    assert isinstance(err.value, tpmtls.TpmtlsError)  # ... and a tpmtls error naming the mismatch
    assert f"does not match {wrong!r}" in str(err.value)


def test_stdlib_ip_address_verifies_against_ip_san(server, tpm_client, pki, test_tpm):
    address, port = server
    cert, key = tpm_client["rsa2048"]
    ctx = tpmtls.ssl_context(cert, key, pki.ca_file, tcti=test_tpm.tcti)
    assert client_subject(stdlib_get(ctx, port, address, address=address)) == "CN=tpm-client-rsa2048"
    other = "127.0.0.2" if "." in address else "::2"
    with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
        stdlib_get(ctx, port, other, address=address)


def test_pyopenssl_rejects_unusable_hostnames(tpm_client, pki, test_tpm):
    cert, key = tpm_client["ecc-p256"]
    for bad in ("", "two words", "nul\0byte"):
        with pytest.raises(tpmtls.TpmtlsError):
            tpmtls.pyopenssl_context(cert, key, pki.ca_file, hostname=bad, tcti=test_tpm.tcti)
