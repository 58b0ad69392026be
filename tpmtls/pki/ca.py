"""A file CA for one machine, tests and the quickstart (`tpmtls ca init|issue`).

DIR holds `ca.crt` and `ca.key`: a software ECDSA P-256 key (mode 0600), or with
`tpm=` a P-256 key created inside the registry owner's TPM (`ca.key` is then a TSS2 key
file: the CA key cannot be copied off that machine, and it signs through the pool).
Certificates it issues are kept in `issued/<serial>.pem`; revocations are recorded by
`pki/revocation.py` (`revoke` here), CRLs signed by `pki/crl.py`.
Fleets plug in an external CA instead (docs/enrollment.md, "Fleets: point the same client at step-ca").
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .._files import check_directory, read_input, write_atomic, write_files
from ..errors import UsageError
from ..tpm.keyfile import is_tpm_key
from .csr import common_name, parse_san

if TYPE_CHECKING:
    from ..tpm.device import Tpm
    from .revocation import Revoked

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
        common_name(name)
        if d.exists() and not d.is_dir():
            raise UsageError(f"{d}: exists and is not a directory; name a directory for the CA")
        if (d / "ca.crt").exists() or (d / "ca.key").exists():
            raise UsageError(f"{d}: already holds a CA (ca.crt/ca.key); use another directory")
        check_directory(d)  # a file, or a read-only disk: said before any key is made
        key: ec.EllipticCurvePrivateKey
        if tpm is not None:
            key = tpm.create_key("ecc-p256")  # type: ignore[assignment]
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
        key_pem = key.to_pem() if tpm is not None else key.private_bytes(  # type: ignore[attr-defined]
            PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        # both files or neither: a full or read-only disk leaves no key without its certificate
        write_files(d, {"ca.key": (key_pem, 0o600), "ca.crt": (cert.public_bytes(PEM), 0o644)}, dir_mode=0o700)
        return cls(d, key, cert)

    @classmethod
    def open(cls, directory: str | Path, tcti: str | None = None) -> "FileCA":
        """Open DIR; a TPM CA key is loaded through `tcti` (default: $TPMTLS_TCTI …)."""
        d = Path(directory)
        if d.exists() and not d.is_dir():
            raise UsageError(f"{d}: not a CA directory (a file; run 'tpmtls ca init DIR')")
        for name in ("ca.key", "ca.crt"):
            if not (d / name).exists():
                raise UsageError(f"{d}: not a CA directory ({name} missing; run 'tpmtls ca init')")
        try:
            key_pem = read_input(d / "ca.key", "CA key")
            cert = x509.load_pem_x509_certificate(read_input(d / "ca.crt", "CA certificate"))
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

    @property
    def issued_dir(self) -> Path:
        return self.directory / "issued"

    def issue(self, csr: x509.CertificateSigningRequest, *, server: bool = False, sans: Sequence[str] = (),
              days: float = 825) -> x509.Certificate:
        """Sign `csr` for a client (clientAuth) or a server (serverAuth, with SANs); kept in issued/."""
        if not csr.is_signature_valid:
            raise UsageError("the CSR's signature does not verify: it was not signed by its key")
        cert = self.issue_for(csr.public_key(), csr.subject, server=server, sans=sans,
                              lifetime=datetime.timedelta(days=days))
        self.record(cert)
        return cert

    def record(self, cert: x509.Certificate) -> Path:
        """Keep an issued certificate in issued/<serial>.pem: the audit trail, and what `ca revoke --serial`
        and a CRL are checked against."""
        self.issued_dir.mkdir(exist_ok=True)
        return write_atomic(self.issued_dir / f"{cert.serial_number:x}.pem", cert.public_bytes(PEM), 0o644)

    def issued(self, serial: str) -> x509.Certificate | None:
        """The certificate this CA issued with `serial` (canonical hex), if it kept it."""
        try:
            return x509.load_pem_x509_certificate((self.issued_dir / f"{serial}.pem").read_bytes())
        except (OSError, ValueError):
            return None

    def revoke(self, *, serial: str | None = None, cert: x509.Certificate | None = None,
               reason: str = "unspecified") -> "tuple[Revoked, bool]":
        """Record a revocation (by serial, or of a certificate this CA signed): (entry, newly revoked?)."""
        from .revocation import RevocationList, parse_serial, reason_name

        if (serial is None) == (cert is None):
            raise UsageError("revoke: give a serial or a certificate")
        if cert is not None:
            try:
                cert.verify_directly_issued_by(self.cert)
            except (ValueError, TypeError, InvalidSignature):
                raise UsageError(f"that certificate ({cert.subject.rfc4514_string()}) was not issued by this CA "
                                 f"({self.cert.subject.rfc4514_string()})") from None
            canonical = f"{cert.serial_number:x}"
        else:
            canonical = parse_serial(serial or "")
            cert = self.issued(canonical)
        return RevocationList(self.directory).add(
            canonical, reason_name(reason), subject=cert.subject.rfc4514_string() if cert is not None else "",
            not_after=cert.not_valid_after_utc if cert is not None else None)

    def issue_for(self, public_key: Any, subject: x509.Name, *, lifetime: datetime.timedelta, server: bool = False,
                  sans: Sequence[str] = ()) -> x509.Certificate:
        """A certificate whose every field comes from the caller's policy, none from a request."""
        now = datetime.datetime.now(datetime.timezone.utc)
        # Valid from a little earlier, for clocks a little behind ours: 5 minutes, less for a certificate
        # that lives minutes, so that 2/3 of its life (when it is renewed) still lies after its issue.
        backdate = min(datetime.timedelta(minutes=5), lifetime / 20)
        b = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(self.cert.subject)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - backdate).not_valid_after(now + lifetime)
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
