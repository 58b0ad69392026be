"""device-attest-01 with format `tpm`: check a CBOR attObj the way step-ca does.

Port of smallstep/certificates acme/challenge.go `deviceAttest01Validate` (payload,
CBOR) and `doTPMAttestationFormat` (AK chain, AK profile, certInfo, extraData binding),
plus step-ca's key-attribute check (an imported or restricted key cannot pass; docs/facts-docker.md,
"ACME device-attest-01 as step-ca checks it") and ours: a PCR quote by the same AK over the
same challenge (`attStmt.tpmtlsPcrQuote`), so the PCR policy is checked for every certificate,
not once per AK (docs/enrollment-server.md, "Continuous attestation"). step-ca ignores attStmt
keys it does not know, so the same attObj serves both.
"""

from __future__ import annotations

import hashlib
import hmac
import io
from dataclasses import dataclass
from typing import Any, Sequence

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from tpm2_pytss.constants import TPM2_ST
from tpm2_pytss.types import TPMT_PUBLIC

from .attest_policy import PcrPolicy
from .attest_verify import (
    check_tls_key_attributes,
    load_der_certificate,
    parse_attest,
    permanent_identifiers,
    refuse,
    tpm_name,
    tpm_public_key,
    unmarshal,
    validate_ak_certificate,
    verify_chain,
    verify_tpm_signature,
)

# COSE algorithm identifiers step-ca accepts for `alg` (RS1, RS256, ES256).
COSE_ALGS = {-65535: "sha1", -257: "sha256", -7: "sha256"}
MAX_ATTOBJ = 64 * 1024
QUOTE_KEY = "tpmtlsPcrQuote"  # attStmt extension: {quoted, sig, pcrs: {bank: {"N": hex}}}


@dataclass(frozen=True)
class AttestedKey:
    """What a valid attObj proves: this public key lives in a TPM whose AK the roots vouch for."""

    public_key: Any
    spki: bytes  # DER SubjectPublicKeyInfo: the finalize CSR must carry the same
    identifiers: list[str]
    ak_certificate: x509.Certificate


def decode_att_obj(att_obj: bytes) -> dict[str, Any]:
    """Well-formed CBOR map {fmt, attStmt} with nothing after it (cbor2; bounded size)."""
    if not att_obj or att_obj in (b"{}",):
        raise refuse("attObj must not be empty")
    if len(att_obj) > MAX_ATTOBJ:
        raise refuse(f"attObj is larger than {MAX_ATTOBJ} bytes")
    stream = io.BytesIO(att_obj)
    try:
        obj = cbor2.CBORDecoder(stream).decode()
    except Exception as e:  # noqa: BLE001 - CBORDecodeError, or a tag decoder's ValueError etc.
        raise refuse(f"attObj is not well formed CBOR ({type(e).__name__})") from None
    if stream.read(1):
        raise refuse("attObj has trailing bytes after its CBOR map")
    if not isinstance(obj, dict) or not isinstance(obj.get("attStmt"), dict):
        raise refuse("attObj is not a map with fmt and attStmt")
    return obj


def verify_att_obj(att_obj: bytes, key_authorization: str, roots: Sequence[x509.Certificate],
                   policy: PcrPolicy | None = None) -> AttestedKey:
    """Every check of doTPMAttestationFormat; with `policy`, also the PCR quote over this challenge.

    A Refusal (badAttestationStatement) names the first failure.
    """
    obj = decode_att_obj(att_obj)
    fmt = obj.get("fmt")
    if fmt != "tpm":
        raise refuse(f"unsupported attestation object format {fmt!r}" if isinstance(fmt, str)
                     else "attObj has no fmt")
    stmt = obj["attStmt"]
    ver = stmt.get("ver")
    if ver != "2.0":
        raise refuse("ver not present" if ver is None else f"version {ver!r} is not supported")
    x5c = stmt.get("x5c")
    if not isinstance(x5c, list):
        raise refuse("x5c not present")
    if not x5c:
        raise refuse("x5c is empty")
    ak_cert = load_der_certificate(x5c[0], "x5c[0]")
    intermediates = [load_der_certificate(c, f"x5c[{i + 1}]") for i, c in enumerate(x5c[1:8])]
    path = verify_chain(ak_cert, intermediates, roots, "x5c")
    for i, extra in enumerate(intermediates):
        if extra not in path:  # stricter than step-ca: a damaged or unrelated extra certificate is refused too
            raise refuse(f"x5c[{i + 1}] is not part of the AK certificate's chain")
    validate_ak_certificate(ak_cert)
    identifiers = permanent_identifiers(ak_cert, "the AK certificate")

    pub_area = stmt.get("pubArea")
    sig = stmt.get("sig")
    cert_info = stmt.get("certInfo")
    for name, value in (("pubArea", pub_area), ("sig", sig), ("certInfo", cert_info)):
        if not isinstance(value, bytes):
            raise refuse(f"invalid {name} in attestation statement")
        if not value:
            raise refuse(f"{name} is empty")
    alg = stmt.get("alg")
    if not isinstance(alg, int) or isinstance(alg, bool) or alg not in COSE_ALGS:
        raise refuse(f"invalid alg {alg!r} in attestation statement")

    # go-attestation CertificationParameters.Verify: certInfo is a TPM2_Certify of pubArea by the AK.
    public = unmarshal(TPMT_PUBLIC, pub_area, "pubArea")
    attest = parse_attest(cert_info, TPM2_ST.ATTEST_CERTIFY, "certInfo")
    if bytes(attest.attested.certify.name) != tpm_name(public, "pubArea"):
        raise refuse("certInfo certifies another key than pubArea")
    try:
        ak_key = ak_cert.public_key()
    except Exception:  # noqa: BLE001
        raise refuse("the AK certificate's public key is unusable") from None
    verify_tpm_signature(ak_key, sig, cert_info, "certInfo")  # type: ignore[arg-type]

    # The binding to this challenge: extraData == SHA-256(keyAuthorization).
    expected = hashlib.sha256(key_authorization.encode()).digest()
    if not hmac.compare_digest(expected, bytes(attest.extraData)):
        raise refuse("key authorization invalid (certInfo.extraData is not SHA-256 of this challenge's "
                     "keyAuthorization: replayed or made for another account)")
    check_tls_key_attributes(public)
    if policy is not None:
        _check_quote(stmt.get(QUOTE_KEY), ak_key, expected, policy)
    key = tpm_public_key(public, "pubArea")
    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return AttestedKey(key, spki, identifiers, ak_cert)


def _check_quote(quote: object, ak_key: Any, nonce: bytes, policy: PcrPolicy) -> None:
    """The AK quoted the policy's PCRs over SHA-256(keyAuthorization), and every value is allowed."""
    if quote is None:
        raise refuse(f"attStmt carries no PCR quote ({QUOTE_KEY}): this server checks the PCR policy for every "
                     "certificate; enroll with a tpmtls client that sends one")
    if not isinstance(quote, dict) or not isinstance(quote.get("quoted"), bytes) or not isinstance(quote.get("sig"), bytes):
        raise refuse(f"{QUOTE_KEY} is not a map with quoted and sig byte strings")
    policy.check_quote(ak_key, quote["quoted"], quote["sig"], quote.get("pcrs"), nonce)


def encode_att_obj(ak_chain: Sequence[bytes], pub_area: bytes, cert_info: bytes, sig: bytes,
                   quote: dict[str, Any] | None = None) -> bytes:
    """The client's attObj: {fmt: "tpm", attStmt: {ver, alg: ES256, x5c, sig, certInfo, pubArea[, tpmtlsPcrQuote]}}."""
    stmt: dict[str, Any] = {"ver": "2.0", "alg": -7, "x5c": list(ak_chain), "sig": sig, "certInfo": cert_info,
                            "pubArea": pub_area}
    if quote is not None:
        stmt[QUOTE_KEY] = quote
    return cbor2.dumps({"fmt": "tpm", "attStmt": stmt})


__all__ = ["QUOTE_KEY", "AttestedKey", "decode_att_obj", "encode_att_obj", "verify_att_obj"]
