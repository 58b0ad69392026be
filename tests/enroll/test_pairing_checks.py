"""The enroll-agent's certificate checks, one rule at a time (names, dates, CA flag)."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from support.pairing import make_cert
from tpmtls.enroll.pairing_agent import Refusal, check_certificate
from tpmtls.pki.ca import FileCA

NOW = datetime.datetime.now(datetime.timezone.utc)


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return FileCA.init(tmp_path_factory.mktemp("ca") / "ca", "check CA")


@pytest.fixture(scope="module")
def server_key():
    return ec.generate_private_key(ec.SECP256R1())


def test_names_match_like_tls_clients_do(ca, server_key):
    pem = make_cert(server_key.public_key(), ca.key, ca.cert, san="Docker1.Example")
    assert check_certificate(pem, ca.cert, server_key, ["docker1.example."]).public_key() == server_key.public_key()
    pem = make_cert(server_key.public_key(), ca.key, ca.cert, san="::1")
    check_certificate(pem, ca.cert, server_key, ["0:0:0:0:0:0:0:1"])
    with pytest.raises(Refusal, match="no subjectAltName for docker2.example"):
        check_certificate(pem, ca.cert, server_key, ["docker2.example"])


def _custom(ca, public_key, *, ca_flag=False, days=(-1, 1)) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(ca.cert.subject).public_key(public_key)
         .serial_number(x509.random_serial_number())
         .not_valid_before(NOW + datetime.timedelta(days=days[0])).not_valid_after(NOW + datetime.timedelta(days=days[1]))
         .add_extension(x509.BasicConstraints(ca=ca_flag, path_length=None), critical=True)
         .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
         .add_extension(x509.SubjectAlternativeName([x509.DNSName("h")]), critical=False))
    return b.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def test_dates_and_ca_flag(ca, server_key):
    with pytest.raises(Refusal, match="not valid now") as r:
        check_certificate(_custom(ca, server_key.public_key(), days=(-3, -1)), ca.cert, server_key, ["h"])
    assert r.value.status == 422
    with pytest.raises(Refusal, match="not valid now"):
        check_certificate(_custom(ca, server_key.public_key(), days=(1, 3)), ca.cert, server_key, ["h"])
    with pytest.raises(Refusal, match="a CA certificate"):
        check_certificate(_custom(ca, server_key.public_key(), ca_flag=True), ca.cert, server_key, ["h"])
    check_certificate(_custom(ca, server_key.public_key()), ca.cert, server_key, ["h"])
