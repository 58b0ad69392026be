"""A file CA for one machine, tests and the quickstart (`tpmtls ca init|issue`).

DIR holds `ca.crt` and `ca.key` (software ECDSA P-256, mode 0600: this is the
registry owner's CA, not a TPM key). Fleets plug in an external CA instead (DESIGN §10).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .._files import write_atomic
from ..errors import UsageError
from .csr import parse_san

PEM = serialization.Encoding.PEM


@dataclass
class FileCA:
    directory: Path
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def cert_path(self) -> Path:
        return self.directory / "ca.crt"

    @classmethod
    def init(cls, directory: str | Path, name: str, days: int = 3650) -> "FileCA":
        d = Path(directory)
        if (d / "ca.crt").exists() or (d / "ca.key").exists():
            raise UsageError(f"{d}: already holds a CA (ca.crt/ca.key); use another directory")
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"{d}: cannot create the CA directory: {e.strerror or e}") from None
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        write_atomic(d / "ca.key", key.private_bytes(PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()), 0o600)
        write_atomic(d / "ca.crt", cert.public_bytes(PEM), 0o644)
        return cls(d, key, cert)

    @classmethod
    def open(cls, directory: str | Path) -> "FileCA":
        d = Path(directory)
        try:
            key = serialization.load_pem_private_key((d / "ca.key").read_bytes(), None)
            cert = x509.load_pem_x509_certificate((d / "ca.crt").read_bytes())
        except FileNotFoundError as e:
            raise UsageError(f"{d}: not a CA directory ({Path(e.filename).name} missing; run 'tpmtls ca init')") from None
        except OSError as e:
            raise UsageError(f"{d}: cannot read the CA files: {e.strerror or e}") from None
        except ValueError as e:
            raise UsageError(f"{d}: damaged CA files ({e})") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise UsageError(f"{d}/ca.key: not the EC key 'tpmtls ca init' makes")
        spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
            raise UsageError(f"{d}: ca.key does not belong to ca.crt (certificates it signed would not verify)")
        return cls(d, key, cert)

    def issue(self, csr: x509.CertificateSigningRequest, *, server: bool = False, sans: Sequence[str] = (),
              days: int = 825) -> x509.Certificate:
        """Sign `csr` for a client (clientAuth) or a server (serverAuth, with SANs)."""
        if not csr.is_signature_valid:
            raise UsageError("the CSR's signature does not verify: it was not signed by its key")
        now = datetime.datetime.now(datetime.timezone.utc)
        b = (
            x509.CertificateBuilder().subject_name(csr.subject).issuer_name(self.cert.subject)
            .public_key(csr.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                  else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        names = parse_san(sans)
        if server and not names:
            raise UsageError("a server certificate needs --san (DNS:host, IP:address)")
        if names:
            b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return b.sign(self.key, hashes.SHA256())


__all__ = ["FileCA"]
