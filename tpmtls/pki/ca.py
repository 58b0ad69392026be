"""A file CA for one machine, tests and the quickstart (`tpmtls ca init|issue`).

DIR holds `ca.crt` and `ca.key`: a software ECDSA P-256 key (mode 0600), or with
`tpm=` a P-256 key created inside the registry owner's TPM (`ca.key` is then a TSS2 key
file: the CA key cannot be copied off that machine, and it signs through the pool).
Fleets plug in an external CA instead (docs/enrollment.md, "Fleets: point the same client at step-ca").
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .._files import write_atomic
from ..errors import UsageError
from ..tpm.keyfile import is_tpm_key
from .csr import parse_san

if TYPE_CHECKING:
    from ..tpm.device import Tpm

PEM = serialization.Encoding.PEM


@dataclass
class FileCA:
    directory: Path
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def cert_path(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def in_tpm(self) -> bool:
        """True when the CA key lives in a TPM (ca.key is a TPM key file)."""
        from ..tpm.keys import TpmKey

        return isinstance(self.key, TpmKey)

    @classmethod
    def init(cls, directory: str | Path, name: str, days: int = 3650, *, tpm: "Tpm | None" = None) -> "FileCA":
        """Create the CA; with `tpm`, its key is made inside that TPM (ca.key: the TPM key file)."""
        d = Path(directory)
        if (d / "ca.crt").exists() or (d / "ca.key").exists():
            raise UsageError(f"{d}: already holds a CA (ca.crt/ca.key); use another directory")
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"{d}: cannot create the CA directory: {e.strerror or e}") from None
        key: ec.EllipticCurvePrivateKey
        if tpm is not None:
            key = tpm.create_key("ecc-p256", d / "ca.key")  # type: ignore[assignment]
        else:
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
        if tpm is None:
            write_atomic(d / "ca.key", key.private_bytes(PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()), 0o600)
        write_atomic(d / "ca.crt", cert.public_bytes(PEM), 0o644)
        return cls(d, key, cert)

    @classmethod
    def open(cls, directory: str | Path, tcti: str | None = None) -> "FileCA":
        """Open DIR; a TPM CA key is loaded through `tcti` (default: $TPMTLS_TCTI …)."""
        d = Path(directory)
        try:
            key_pem = (d / "ca.key").read_bytes()
            cert = x509.load_pem_x509_certificate((d / "ca.crt").read_bytes())
            key: object
            if is_tpm_key(key_pem):
                from ..tpm import connect

                key = connect(tcti).load_key(d / "ca.key")
            else:
                key = serialization.load_pem_private_key(key_pem, None)
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
        return self.issue_for(csr.public_key(), csr.subject, server=server, sans=sans,
                              lifetime=datetime.timedelta(days=days))

    def issue_for(self, public_key: Any, subject: x509.Name, *, lifetime: datetime.timedelta, server: bool = False,
                  sans: Sequence[str] = ()) -> x509.Certificate:
        """A certificate whose every field comes from the caller's policy, none from a request."""
        now = datetime.datetime.now(datetime.timezone.utc)
        b = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(self.cert.subject)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + lifetime)
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
