"""Verifier side of TPM attestation: parse what a client sent and check it, without a TPM.

Every parse or check failure is a `Refusal` naming the structure and the reason, so
the servers answer one ACME problem document per bad input and never crash on one.
The checks port step-ca's (smallstep/certificates acme/challenge.go
doTPMAttestationFormat, validateAKCertificate) and go-attestation's AK parameter
checks (attest/activation.go, attest/certification.go).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
from typing import Any, Sequence, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.x509.oid import ObjectIdentifier
from tpm2_pytss.constants import TPM2_ALG, TPM2_GENERATED, TPM2_ST, TPMA_OBJECT
from tpm2_pytss.types import TPMS_ATTEST, TPMT_PUBLIC, TPMT_SIGNATURE

from .attest_errors import Refusal

BAD_ATTESTATION = "badAttestationStatement"
OID_TCG_KP_AIK_CERTIFICATE = ObjectIdentifier("2.23.133.8.3")
OID_TPM_MANUFACTURER = ObjectIdentifier("2.23.133.2.1")
OID_TPM_MODEL = ObjectIdentifier("2.23.133.2.2")
OID_TPM_VERSION = ObjectIdentifier("2.23.133.2.3")
OID_PERMANENT_IDENTIFIER = ObjectIdentifier("1.3.6.1.5.5.7.8.3")  # RFC 4043
_MAX_CHAIN = 8

_HASHES: dict[int, type[hashes.HashAlgorithm]] = {
    int(TPM2_ALG.SHA1): hashes.SHA1,
    int(TPM2_ALG.SHA256): hashes.SHA256,
    int(TPM2_ALG.SHA384): hashes.SHA384,
    int(TPM2_ALG.SHA512): hashes.SHA512,
}
HASHLIB_NAMES = {int(TPM2_ALG.SHA1): "sha1", int(TPM2_ALG.SHA256): "sha256", int(TPM2_ALG.SHA384): "sha384",
                 int(TPM2_ALG.SHA512): "sha512"}

_T = TypeVar("_T")


def refuse(detail: str, kind: str = BAD_ATTESTATION) -> Refusal:
    return Refusal(kind, detail)


def unmarshal(cls: Any, data: object, what: str) -> Any:
    """A TPM structure from bytes that must hold exactly one, else a refusal naming `what`."""
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise refuse(f"{what} is missing or not a byte string")
    try:
        value, used = cls.unmarshal(bytes(data))
    except Exception:  # noqa: BLE001 - tpm2-pytss raises TSS2_Exception/ValueError/TypeError on garbage
        raise refuse(f"{what} is malformed (not a {cls.__name__})") from None
    if used != len(data):
        raise refuse(f"{what} has {len(data) - used} trailing bytes after the {cls.__name__}")
    return value


def tpm_public_key(public: TPMT_PUBLIC, what: str) -> Any:
    """The cryptography public key of a TPM public area."""
    try:
        return serialization.load_pem_public_key(public.to_pem())
    except Exception:  # noqa: BLE001 - unsupported type, curve or bad point
        raise refuse(f"{what} holds no usable RSA or EC public key") from None


def tpm_name(public: TPMT_PUBLIC, what: str) -> bytes:
    """TPM name: nameAlg || H_nameAlg(TPMT_PUBLIC) (TPM 2.0 Part 1, 16)."""
    name = HASHLIB_NAMES.get(int(public.nameAlg))
    if name is None:
        raise refuse(f"{what} has an unsupported name algorithm 0x{int(public.nameAlg):x}")
    return int(public.nameAlg).to_bytes(2, "big") + hashlib.new(name, public.marshal()).digest()


def verify_tpm_signature(key: Any, signature: object, data: bytes, what: str) -> None:
    """Check a TPMT_SIGNATURE (RSASSA, RSAPSS or ECDSA) by `key` over `data`."""
    sig = unmarshal(TPMT_SIGNATURE, signature, f"{what} signature")
    alg = int(sig.sigAlg)
    try:
        hash_alg = int(sig.signature.any.hashAlg)
        hash_cls = _HASHES.get(hash_alg)
        if hash_cls is None:
            raise refuse(f"{what} signature uses an unsupported hash 0x{hash_alg:x}")
        if alg == TPM2_ALG.ECDSA and isinstance(key, ec.EllipticCurvePublicKey):
            r = int.from_bytes(bytes(sig.signature.ecdsa.signatureR), "big")
            s = int.from_bytes(bytes(sig.signature.ecdsa.signatureS), "big")
            key.verify(utils.encode_dss_signature(r, s), data, ec.ECDSA(hash_cls()))
        elif alg == TPM2_ALG.RSASSA and isinstance(key, rsa.RSAPublicKey):
            key.verify(bytes(sig.signature.rsassa.sig), data, padding.PKCS1v15(), hash_cls())
        elif alg == TPM2_ALG.RSAPSS and isinstance(key, rsa.RSAPublicKey):
            key.verify(bytes(sig.signature.rsapss.sig), data,
                       padding.PSS(mgf=padding.MGF1(hash_cls()), salt_length=padding.PSS.AUTO), hash_cls())
        else:
            raise refuse(f"{what} signature algorithm 0x{alg:x} does not fit the signing key")
    except InvalidSignature:
        raise refuse(f"{what} signature does not verify") from None
    except Refusal:
        raise
    except Exception:  # noqa: BLE001 - e.g. r/s out of range
        raise refuse(f"{what} signature is malformed") from None


def parse_attest(data: object, expected: TPM2_ST, what: str) -> Any:
    """A TPMS_ATTEST made by a TPM (magic TPM_GENERATED_VALUE) of the expected type."""
    attest = unmarshal(TPMS_ATTEST, data, what)
    if int(attest.magic) != int(TPM2_GENERATED.VALUE):
        raise refuse(f"{what} was not made by a TPM (magic 0x{int(attest.magic):x})")
    if int(attest.type) != int(expected):
        raise refuse(f"{what} is a TPMS_ATTEST of type 0x{int(attest.type):x}, not 0x{int(expected):x}")
    return attest


def check_tls_key_attributes(public: TPMT_PUBLIC, what: str = "the attested key") -> None:
    """A TLS key born in this TPM that never leaves it: fixedTPM|fixedParent|sensitiveDataOrigin, not restricted.

    An imported key lacks fixedTPM and sensitiveDataOrigin (TPM2_Import), a duplicable
    key lacks fixedParent; a restricted key is an attestation key, which must not sign TLS.
    """
    attrs = int(public.objectAttributes)
    for flag, why in ((TPMA_OBJECT.FIXEDTPM, "not fixedTPM (imported or duplicable: it may exist outside this TPM)"),
                      (TPMA_OBJECT.FIXEDPARENT, "not fixedParent (duplicable)"),
                      (TPMA_OBJECT.SENSITIVEDATAORIGIN, "not sensitiveDataOrigin (its secret came from outside the TPM)"),
                      (TPMA_OBJECT.SIGN_ENCRYPT, "not a signing key")):
        if not attrs & int(flag):
            raise refuse(f"{what} is {why}")
    if attrs & int(TPMA_OBJECT.RESTRICTED):
        raise refuse(f"{what} is restricted (an attestation key, not a TLS key)")


def check_ak_public(public: TPMT_PUBLIC) -> None:
    """An AK is a restricted signing key fixed to its TPM (go-attestation checkTPM20AKParameters)."""
    attrs = int(public.objectAttributes)
    need = (TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.SENSITIVEDATAORIGIN
            | TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.SIGN_ENCRYPT)
    if attrs & int(need) != int(need):
        raise refuse("the AK is not a restricted signing key fixed to its TPM (fixedTPM|fixedParent|"
                     "sensitiveDataOrigin|restricted|sign)")
    if attrs & int(TPMA_OBJECT.DECRYPT):
        raise refuse("the AK is also a decryption key")


def verify_ak_creation(public: TPMT_PUBLIC, create_data: bytes, attestation: bytes, signature: bytes) -> None:
    """The AK certified its own creation: CertifyCreation over H(creationData), naming the AK."""
    if not isinstance(create_data, (bytes, bytearray)) or not create_data:
        raise refuse("params.createData is missing")
    attest = parse_attest(attestation, TPM2_ST.ATTEST_CREATION, "params.createAttestation")
    name = tpm_name(public, "params.public")
    creation = attest.attested.creation
    if bytes(creation.objectName) != name:
        raise refuse("params.createAttestation names another key than params.public")
    digest = hashlib.new(HASHLIB_NAMES[int(public.nameAlg)], bytes(create_data)).digest()
    if not hmac.compare_digest(bytes(creation.creationHash), digest):
        raise refuse("params.createAttestation does not match params.createData")
    verify_tpm_signature(tpm_public_key(public, "params.public"), signature, attestation, "params.createAttestation")


def load_der_certificate(data: object, what: str) -> x509.Certificate:
    """A DER certificate, strictly: also its signature BIT STRING (see `check_der_signature`)."""
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise refuse(f"{what} is missing or not a byte string")
    try:
        cert = x509.load_der_x509_certificate(bytes(data))
    except Exception:  # noqa: BLE001 - ValueError mostly
        raise refuse(f"{what} is not a DER X.509 certificate") from None
    check_der_signature(bytes(data), cert.signature, what)
    return cert


def check_der_signature(der: bytes, signature: bytes, what: str) -> None:
    """The signed object ends with BIT STRING {0 unused bits, signature}, as DER demands.

    Parsers (cryptography's, Go's) accept a non-zero unused-bits count when the padding
    bits are zero; the signature still verifies, so one certificate would have several
    encodings. Fuzzing found it; we accept exactly one.
    """
    tail = b"\x03" + _der_len(len(signature) + 1) + b"\x00" + signature
    if not der.endswith(tail):
        raise refuse(f"{what} is not DER: its signature BIT STRING is encoded oddly")


def load_der_csr(data: object, what: str = "csr") -> x509.CertificateSigningRequest:
    """A DER PKCS#10 request with a valid self-signature (what ACME finalize accepts)."""
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise refuse(f"{what} is missing", "badCSR")
    try:
        csr = x509.load_der_x509_csr(bytes(data))
        csr.public_key()
        signed = csr.is_signature_valid
    except Exception:  # noqa: BLE001 - bad DER, unsupported key
        raise refuse(f"{what} is not a DER PKCS#10 request", "badCSR") from None
    if not signed:
        raise refuse(f"{what}: the signature does not verify", "badCSR")
    try:
        check_der_signature(bytes(data), csr.signature, what)
    except Refusal as e:
        raise refuse(e.detail, "badCSR") from None
    return csr


def ek_certificate_from_nv(data: object, what: str = "ekCerts[0]") -> x509.Certificate:
    """An EK certificate as stored in NV: tolerate a TCG header (0x10 0x01 + length) and trailing padding.

    TCG PC Client Platform TPM Profile: some TPMs prefix the DER with a 4-byte header and
    pad the NV index with zeros or 0xFF; the DER's own length says where it ends.
    """
    if not isinstance(data, (bytes, bytearray)) or len(data) < 4:
        raise refuse(f"{what} is missing or too short")
    raw = bytes(data)
    for start in (0, 4):
        if raw[start:start + 1] != b"\x30":
            continue
        first = raw[start + 1] if len(raw) > start + 1 else 0
        if first < 0x80:
            length, header = first, 2
        else:
            n = first & 0x7F
            if n == 0 or n > 4 or len(raw) < start + 2 + n:
                continue
            length, header = int.from_bytes(raw[start + 2:start + 2 + n], "big"), 2 + n
        end = start + header + length
        if end > len(raw):
            continue
        return load_der_certificate(raw[start:end], what)
    raise refuse(f"{what} holds no DER certificate (neither bare nor after a TCG NV header)")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _valid_now(cert: x509.Certificate, what: str, now: datetime.datetime) -> None:
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise refuse(f"{what} is not valid now (valid {cert.not_valid_before_utc:%Y-%m-%d} to "
                     f"{cert.not_valid_after_utc:%Y-%m-%d})")


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return cert.version == x509.Version.v1  # old roots without extensions
    except Exception:  # noqa: BLE001 - a malformed extension
        return False


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except Exception:  # noqa: BLE001 - name mismatch, bad signature, unsupported key
        return False


def verify_chain(leaf: x509.Certificate, intermediates: Sequence[x509.Certificate],
                 anchors: Sequence[x509.Certificate], what: str,
                 now: datetime.datetime | None = None) -> list[x509.Certificate]:
    """`leaf` chains through `intermediates` to one of `anchors` (each a trusted CA, root or not).

    TPM certificates (EK, AK) do not fit the web PKI profile cryptography's verifier
    enforces (empty subjects, critical SANs, TCG key usages), so the chain is walked
    here: names, signatures, CA flags and validity, at most 8 links. Returns the path
    from `leaf` to its anchor, both included.
    """
    now = now or _now()
    _valid_now(leaf, what, now)
    current = leaf
    path = [leaf]
    for _ in range(_MAX_CHAIN):
        for anchor in anchors:
            if _issued_by(current, anchor):
                _valid_now(anchor, f"{what}'s trust anchor {anchor.subject.rfc4514_string()}", now)
                return path + [anchor]
        step = next((c for c in intermediates if _is_ca(c) and _issued_by(current, c)), None)
        if step is None:
            raise refuse(f"{what} does not chain to a trusted CA (issuer {current.issuer.rfc4514_string() or '<empty>'})")
        _valid_now(step, f"{what}'s intermediate {step.subject.rfc4514_string()}", now)
        current = step
        path.append(step)
    raise refuse(f"{what}'s chain is longer than {_MAX_CHAIN}")


def ek_urn(public_key: Any) -> str:
    """smallstep's EK identifier: 'urn:ek:sha256:' + base64(SHA-256(PKIX DER of the EK))."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "urn:ek:sha256:" + base64.b64encode(hashlib.sha256(der).digest()).decode()


def encode_permanent_identifier(value: str) -> bytes:
    """DER of RFC 4043 PermanentIdentifier ::= SEQUENCE { identifierValue UTF8String }."""
    body = value.encode()
    inner = b"\x0c" + _der_len(len(body)) + body
    return b"\x30" + _der_len(len(inner)) + inner


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def decode_permanent_identifier(der: bytes) -> str | None:
    """identifierValue of a PermanentIdentifier, or None if absent or malformed."""
    try:
        if der[0] != 0x30:
            return None
        _, off = _read_len(der, 1)
        if der[off] != 0x0C:
            return None
        n, off2 = _read_len(der, off + 1)
        if off2 + n > len(der):
            return None
        return der[off2:off2 + n].decode()
    except (IndexError, UnicodeDecodeError, ValueError):
        return None


def _read_len(der: bytes, off: int) -> tuple[int, int]:
    first = der[off]
    if first < 0x80:
        return first, off + 1
    n = first & 0x7F
    if n == 0 or n > 4:
        raise ValueError("bad DER length")
    return int.from_bytes(der[off + 1:off + 1 + n], "big"), off + 1 + n


def _sans(cert: x509.Certificate, what: str) -> x509.SubjectAlternativeName | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    except Exception:  # noqa: BLE001 - malformed extension
        raise refuse(f"{what} has a malformed Subject Alternative Name") from None


def tpm_hardware_details(cert: x509.Certificate, what: str) -> dict[str, str]:
    """TPM manufacturer/model/version from the SAN directoryName (TCG EK Credential Profile 3.2.9)."""
    out: dict[str, str] = {}
    sans = _sans(cert, what)
    if sans is None:
        return out
    for name in sans.get_values_for_type(x509.DirectoryName):
        for attr in name:
            for oid, key in ((OID_TPM_MANUFACTURER, "manufacturer"), (OID_TPM_MODEL, "model"),
                             (OID_TPM_VERSION, "version")):
                if attr.oid == oid and isinstance(attr.value, str):
                    out[key] = attr.value
    return out


def permanent_identifiers(cert: x509.Certificate, what: str) -> list[str]:
    sans = _sans(cert, what)
    if sans is None:
        return []
    out = []
    for name in sans:
        if isinstance(name, x509.OtherName) and name.type_id == OID_PERMANENT_IDENTIFIER:
            value = decode_permanent_identifier(name.value)
            if value is not None:
                out.append(value)
    return out


def validate_ak_certificate(cert: x509.Certificate) -> None:
    """step-ca validateAKCertificate (WebAuthn TPM cert requirements): v3, empty subject, not a CA,
    first EKU tcg-kp-AIKCertificate, SAN with TPM manufacturer, model and version."""
    what = "the AK certificate"
    if cert.version != x509.Version.v3:
        raise refuse(f"{what} is not version 3")
    if len(cert.subject) != 0:
        raise refuse(f"{what} subject must be empty; got {cert.subject.rfc4514_string()!r}")
    if _is_ca(cert):
        raise refuse(f"{what} must not be a CA")
    try:
        eku = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        raise refuse(f"{what} is missing the Extended Key Usage extension") from None
    except Exception:  # noqa: BLE001
        raise refuse(f"{what} has a malformed Extended Key Usage extension") from None
    if not eku or eku[0] != OID_TCG_KP_AIK_CERTIFICATE:
        raise refuse(f"{what} is missing Extended Key Usage value tcg-kp-AIKCertificate (2.23.133.8.3)")
    details = tpm_hardware_details(cert, what)
    for key in ("manufacturer", "model", "version"):
        if not details.get(key):
            raise refuse(f"{what} is missing the TPM {key}")


def load_pem_bundle(data: bytes, source: str) -> list[x509.Certificate]:
    """Certificates of a PEM bundle; a clear error if it holds none."""
    from .attest_errors import EnrollError

    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise EnrollError(f"{source}: holds no PEM certificate")
    return certs


__all__ = [
    "BAD_ATTESTATION", "check_ak_public", "check_der_signature", "load_der_csr", "check_tls_key_attributes",
    "ek_certificate_from_nv",
    "ek_urn",
    "encode_permanent_identifier", "load_der_certificate", "load_pem_bundle", "parse_attest", "permanent_identifiers",
    "refuse", "tpm_hardware_details", "tpm_name", "tpm_public_key", "unmarshal", "validate_ak_certificate",
    "verify_ak_creation", "verify_chain", "verify_tpm_signature",
]
