"""Checks on certificates before Docker's files are written or used, each failure one line.

Used by `tpmtls certs install` (certs.d), `certs env` (DOCKER_CERT_PATH), `certs
daemon-config` and `certs nginx-front` (what dockerd or NGINX serve) and the pairing
agent, so a daemon is never configured with a certificate it would refuse to serve
(wrong key, wrong CA, client-only, missing name) and a client never installs one its
server would refuse.
"""

from __future__ import annotations

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID

from .._files import read_input
from ..errors import TlsSetupError, UsageError
from ..tpm.keyfile import is_tpm_key_file

_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
_WILDCARD = {"0.0.0.0", "::", ""}


def load_cert(path: str | os.PathLike[str], what: str = "certificate") -> x509.Certificate:
    """A PEM certificate (the first of a chain), or a one-line error naming the file."""
    try:
        return x509.load_pem_x509_certificates(read_input(path, what))[0]
    except ValueError:
        raise UsageError(f"{path}: not a PEM {what}") from None


def check_ca(ca_path: str | os.PathLike[str]) -> None:
    """The file holds PEM certificates (a CA bundle)."""
    load_cert(ca_path, "CA certificate")


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def allows(cert: x509.Certificate, usage: x509.ObjectIdentifier) -> bool:
    """Does the certificate's extended key usage allow `usage`? (no extension, or anyExtendedKeyUsage: yes,
    as Go's crypto/x509 — dockerd's — and OpenSSL decide)."""
    try:
        ekus = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return usage in ekus or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in ekus


def check_chain(cert_path: str | os.PathLike[str], ca_path: str | os.PathLike[str], *, server: bool) -> x509.Certificate:
    """The certificate, after checking it is signed by the CA and made for its role."""
    cert, ca = load_cert(cert_path), load_cert(ca_path, "CA certificate")
    if not _issued_by(cert, ca):
        raise TlsSetupError(f"{cert_path}: not signed by the CA in {ca_path}; peers trusting that CA would refuse it")
    if not allows(cert, ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH):
        role, flag = ("server", "--server --san …") if server else ("client", "--client")
        raise TlsSetupError(f"{cert_path}: not a {role} certificate (no {'serverAuth' if server else 'clientAuth'} "
                            f"usage); issue one with 'tpmtls ca issue {flag}'")
    return cert


def check_client_cert(cert_path: str | os.PathLike[str], public_key: PublicKeyTypes) -> x509.Certificate:
    """For certs.d: the certificate parses, is for `public_key`, is in date and allows a TLS client.

    No chain check: certs.d's ca.crt is the CA of the registry's server certificate,
    which need not be the one that issued ours.
    """
    cert = load_cert(cert_path)
    if cert.public_key().public_bytes(*_SPKI) != public_key.public_bytes(*_SPKI):
        raise UsageError(f"{cert_path}: this certificate is for another key than the one given with --key")
    now = datetime.datetime.now(datetime.timezone.utc)
    if now < cert.not_valid_before_utc:
        raise UsageError(f"{cert_path}: not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    if now > cert.not_valid_after_utc:
        raise UsageError(f"{cert_path}: expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    if not allows(cert, ExtendedKeyUsageOID.CLIENT_AUTH):
        raise UsageError(f"{cert_path}: its extended key usage does not allow clientAuth (TLS client)")
    try:
        if not cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature:
            raise UsageError(f"{cert_path}: its key usage does not allow digitalSignature (TLS client)")
    except x509.ExtensionNotFound:
        pass
    return cert


def check_tpm_client(cert: str, key: str, ca: str, *, tcti: str | None = None,
                     password: bytes | None = None) -> x509.Certificate:
    """For DOCKER_CERT_PATH: a client certificate from the CA (ca.pem: the one CA of the daemon and
    its clients, as Docker's TLS guide sets it up) that belongs to the TPM key file."""
    if not is_tpm_key_file(key):
        raise UsageError(f"{key}: not a TPM key file (TSS2 PRIVATE KEY); a software key needs no tpmtls")
    certificate = check_chain(cert, ca, server=False)
    from ..tpm import connect

    if connect(tcti).load_key(key, password).public_key() != certificate.public_key():
        raise TlsSetupError(f"{cert}: this certificate does not belong to the key {key}")
    return certificate


def _check_server_key(cert_path: str, key_path: str, cert: x509.Certificate) -> None:
    if is_tpm_key_file(key_path):
        raise UsageError(f"{key_path}: a TPM key file; dockerd cannot use a TPM, give the daemon a file key "
                         "(the CA key and the clients' keys can stay in TPMs)")
    data = read_input(key_path, "key")
    try:
        key = serialization.load_pem_private_key(data, None)
    except TypeError:
        raise UsageError(f"{key_path}: encrypted; dockerd cannot read a key with a passphrase") from None
    except ValueError as e:
        raise UsageError(f"{key_path}: not a PEM private key ({e})") from None
    if key.public_key() != cert.public_key():
        raise TlsSetupError(f"{cert_path}: this certificate does not belong to the key {key_path}")


def check_server(cert: str, key: str, ca: str) -> x509.Certificate:
    """A server certificate from the CA, with its file key: what dockerd or NGINX can serve."""
    server_cert = check_chain(cert, ca, server=True)
    _check_server_key(cert, key, server_cert)
    return server_cert


def _names(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set(), set()
    return ({n.lower() for n in san.get_values_for_type(x509.DNSName)},
            {str(a) for a in san.get_values_for_type(x509.IPAddress)})


def check_names(cert_path: str, cert: x509.Certificate, name: str) -> None:
    """The certificate names `name` (a DNS name or an IP address), unless it is a wildcard bind."""
    if name in _WILDCARD:
        return
    dns, ips = _names(cert)
    try:
        ok = str(ipaddress.ip_address(name)) in ips
        kind = "IP"
    except ValueError:
        ok, kind = name.lower() in dns, "DNS"
    if not ok:
        raise TlsSetupError(f"{cert_path}: has no subjectAltName for {name}; clients would refuse the server "
                            f"(issue it with --san {kind}:{name})")


__all__ = ["allows", "check_ca", "check_chain", "check_client_cert", "check_names", "check_server", "check_tpm_client",
           "load_cert"]
