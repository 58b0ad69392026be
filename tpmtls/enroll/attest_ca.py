"""The Attestation CA: validates a TPM's EK certificate, proves the AK lives with that EK
(MakeCredential), checks a PCR quote against the policy, then certifies the AK.

The wire format is smallstep's (`POST /attest {tpmInfo, ek, ekCerts, akCert, params}` →
`{credential, secret}`, `POST /secret {secret}` → `{chain}`; []byte fields are base64 as Go
marshals them). Ours adds `nonce` and `pcrs` to the first answer and `quote` to the second.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from tpm2_pytss.types import TPMT_PUBLIC
from tpm2_pytss.utils import NoSuchIndex, create_ek_template, make_credential

from .._files import write_atomic
from .attest_errors import EnrollError, Refusal
from .attest_policy import PcrPolicy
from .attest_verify import (
    OID_PERMANENT_IDENTIFIER,
    OID_TCG_KP_AIK_CERTIFICATE,
    OID_TPM_MANUFACTURER,
    OID_TPM_MODEL,
    OID_TPM_VERSION,
    check_ak_public,
    ek_certificate_from_nv,
    ek_urn,
    encode_permanent_identifier,
    load_der_certificate,
    refuse,
    tpm_hardware_details,
    tpm_name,
    tpm_public_key,
    unmarshal,
    verify_ak_creation,
    verify_chain,
)
from .ek_hygiene import EkCrls, EkDenyList, check_not_roca
from .state import AttestSession, EnrollStore

SESSION_TTL = 120.0  # seconds a credential/nonce may wait for its answer
# The client makes a new AK for every enrollment and the PCRs are quoted again for every
# certificate (docs/enrollment-server.md), so an AK certificate need not outlive one enrollment.
AK_CERT_HOURS = 1


def b64field(body: Any, key: str, what: str | None = None) -> bytes:
    """A base64 (standard, as Go marshals []byte) field of a JSON object; a refusal if unusable."""
    what = what or key
    value = body.get(key) if isinstance(body, dict) else None
    if not isinstance(value, str) or not value:
        raise refuse(f"{what} is missing or not a base64 string", "malformed")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise refuse(f"{what} is not valid base64", "malformed") from None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _ek_template(name: str) -> TPMT_PUBLIC:
    """A TCG EK template by name (tpm2-pytss), without a TPM: the NV reads find a certificate, nothing else."""
    reads: list[int] = []

    def nv_read(index: int) -> bytes:
        reads.append(index)
        if len(reads) == 1:
            return b"certificate"  # create_ek_template reads the certificate index first; its content is unused
        raise NoSuchIndex(index)

    _, template = create_ek_template(name, nv_read)
    return template.publicArea


def ek_tpm_public(key: Any) -> TPMT_PUBLIC:
    """The TPMT_PUBLIC of the EK with this key (TCG EK Credential Profile templates L-1, L-2, H-3).

    MakeCredential uses the name algorithm, the symmetric scheme and the key: the low- and
    high-range RSA-2048 (and P-256) templates agree on both, so one serves for either range.
    """
    if isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048:
        public = _ek_template("EK-RSA2048")
        public.unique.rsa = key.public_numbers().n.to_bytes(256, "big")
        return public
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in ("secp256r1", "secp384r1"):
        size = key.curve.key_size // 8
        public = _ek_template("EK-ECC256" if size == 32 else "EK-HIGH-ECC384")
        nums = key.public_numbers()
        public.unique.ecc.x = nums.x.to_bytes(size, "big")
        public.unique.ecc.y = nums.y.to_bytes(size, "big")
        return public
    raise refuse("the EK is neither RSA-2048 nor ECC P-256/P-384 (the EKs this Attestation CA supports)")


@dataclass
class AttestationCA:
    """Keeps its own CA key (`attestation-ca.crt/.key` in the CA directory) for AK certificates.

    Pending sessions live in the `store` (one per EK: a new `/attest` for an EK replaces its
    unanswered one), so `/attest` and `/secret` may reach different server processes.
    """

    directory: Path
    ek_roots: list[x509.Certificate]
    policy: PcrPolicy
    store: EnrollStore
    clock: Callable[[], float] = time.time
    ttl: float = SESSION_TTL
    ek_deny: EkDenyList | None = None
    ek_crls: EkCrls | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    issued: int = 0

    def __post_init__(self) -> None:
        self.key, self.cert = _load_or_create(Path(self.directory))

    @property
    def root_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def attest(self, body: Any) -> dict[str, Any]:
        """`POST /attest`: check EK chain and AK; answer a credential only that TPM can activate."""
        certs = body.get("ekCerts") if isinstance(body, dict) else None
        if not isinstance(certs, list) or not certs:
            raise refuse("ekCerts is missing: this Attestation CA needs the EK certificate")
        ek_cert = ek_certificate_from_nv(b64field({"c": certs[0]}, "c", "ekCerts[0]"), "ekCerts[0]")
        more = [load_der_certificate(b64field({"c": c}, "c", f"ekCerts[{i + 1}]"), f"ekCerts[{i + 1}]")
                for i, c in enumerate(certs[1:8])]
        path = verify_chain(ek_cert, more, self.ek_roots, "the EK certificate")
        for i, extra in enumerate(more):
            if extra not in path:
                raise refuse(f"ekCerts[{i + 1}] is not part of the EK certificate's chain")
        try:
            ek_key = ek_cert.public_key()
        except Exception:  # noqa: BLE001
            raise refuse("the EK certificate's public key is unusable") from None
        check_not_roca(ek_key, "the EK")
        if self.ek_crls is not None:
            self.ek_crls.check(path, "the EK certificate")
        if self.ek_deny is not None:
            self.ek_deny.check([ek_urn(ek_key)], "the EK")
        if "ek" in body:  # optional (smallstep: omitempty), but if sent it must be the certificate's key
            try:
                claimed = serialization.load_der_public_key(b64field(body, "ek"))
            except Refusal:
                raise
            except Exception:  # noqa: BLE001
                raise refuse("ek is not a DER SubjectPublicKeyInfo") from None
            if _spki(claimed) != _spki(ek_key):
                raise refuse("ek is not the key of the EK certificate")
        params = body.get("params")
        if not isinstance(params, dict):
            raise refuse("params is missing")
        ak_public = unmarshal(TPMT_PUBLIC, b64field(params, "public", "params.public"), "params.public")
        check_ak_public(ak_public)
        tpm_public_key(ak_public, "params.public")
        verify_ak_creation(ak_public, b64field(params, "createData", "params.createData"),
                           b64field(params, "createAttestation", "params.createAttestation"),
                           b64field(params, "createSignature", "params.createSignature"))
        details = tpm_hardware_details(ek_cert, "the EK certificate")
        info = body.get("tpmInfo") if isinstance(body.get("tpmInfo"), dict) else {}
        for key, alt in (("manufacturer", "manufacturer"), ("model", "model"), ("version", "firmwareVersion")):
            if not details.get(key) and isinstance(info.get(alt), str) and info[alt]:
                details[key] = info[alt][:64]
            details.setdefault(key, "unknown")
        secret, nonce = os.urandom(32), os.urandom(32)
        credential, encrypted = make_credential(ek_tpm_public(ek_key), secret, tpm_name(ak_public, "params.public"))
        self.store.put_session(AttestSession(hashlib.sha256(secret).digest(), ek_urn(ek_key), ak_public.marshal(), details,
                                             nonce, self.clock() + self.ttl))
        return {"credential": b64(credential.marshal()), "secret": b64(encrypted.marshal()),
                "nonce": b64(nonce), "pcrs": self.policy.selection}

    def secret(self, body: Any) -> dict[str, Any]:
        """`POST /secret`: the activated secret (single use) and a PCR quote → the AK certificate chain."""
        secret = b64field(body, "secret")
        session = self.store.take_session(hashlib.sha256(secret).digest())
        if session is None:
            raise Refusal("unauthorized", "unknown or already used secret: run the attestation again")
        if session.expires < self.clock():
            raise Refusal("unauthorized", f"the credential expired ({self.ttl:.0f} s to answer): run the attestation again")
        quote = body.get("quote")
        if not isinstance(quote, dict):
            raise refuse("quote is missing: this Attestation CA demands a PCR quote over its nonce")
        ak_key = tpm_public_key(unmarshal(TPMT_PUBLIC, session.ak_public, "params.public"), "params.public")
        self.policy.check_quote(ak_key, b64field(quote, "quoted", "quote.quoted"),
                                b64field(quote, "signature", "quote.signature"), quote.get("pcrs"), session.nonce)
        cert = self._issue_ak_cert(ak_key, session)
        return {"chain": [b64(cert.public_bytes(serialization.Encoding.DER)),
                          b64(self.cert.public_bytes(serialization.Encoding.DER))],
                "permanentIdentifier": session.ek}

    def _issue_ak_cert(self, ak_key: Any, session: AttestSession) -> x509.Certificate:
        """The AK certificate profile step-ca checks (WebAuthn TPM attestation): empty subject, critical SAN
        with the TPM's manufacturer/model/version and the EK's permanent identifier, EKU tcg-kp-AIKCertificate."""
        now = datetime.datetime.now(datetime.timezone.utc)
        hw = x509.Name([x509.NameAttribute(OID_TPM_MANUFACTURER, session.details["manufacturer"]),
                        x509.NameAttribute(OID_TPM_MODEL, session.details["model"]),
                        x509.NameAttribute(OID_TPM_VERSION, session.details["version"])])
        san = x509.SubjectAlternativeName([
            x509.DirectoryName(hw),
            x509.OtherName(OID_PERMANENT_IDENTIFIER, encode_permanent_identifier(session.ek)),
            x509.UniformResourceIdentifier(session.ek),
        ])
        cert = (
            x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(self.cert.subject)
            .public_key(ak_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=AK_CERT_HOURS))
            .add_extension(san, critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([OID_TCG_KP_AIK_CERTIFICATE]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        with self._lock:
            self.issued += 1
        return cert


def _spki(key: Any) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _load_or_create(directory: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The Attestation CA's own key pair, made once next to the file CA (mode 0600)."""
    key_path, cert_path = directory / "attestation-ca.key", directory / "attestation-ca.crt"
    if key_path.exists() and cert_path.exists():
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), None)
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except (OSError, ValueError, TypeError) as e:
            raise EnrollError(f"{directory}: damaged attestation-ca.key/.crt ({e}); move them away to make new ones") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise EnrollError(f"{key_path}: not the EC key tpmtls makes; move it away to make a new one")
        return key, cert
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tpmtls Attestation CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_atomic(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()), 0o600)
    write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return key, cert


__all__ = ["AK_CERT_HOURS", "AttestationCA", "b64", "b64field", "ek_tpm_public"]
