"""The EK a key is wrapped for (`tpmtls key wrap --ek EKCERT.pem --ek-roots BUNDLE`), and why it is trusted.

Wrapping to a public key proves nothing about where its private half lives: a software RSA
key, or an EK.pem whose key is not the one its certificate names, would let whoever made the
file unwrap the owner's key in software (tpm2-pytss `utils.unwrap`). So the EK must come with
its certificate, the certificate must chain to the TPM makers' roots the owner trusts, its key
must not be ROCA-weak, and any public key shown beside it must be the certificate's: the same
verification the enrollment server's Attestation CA applies (enroll/ek_verify.py).
`--ek-unverified` takes a plain public key and says what that gives up (docs/key-transfer.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from tpm2_pytss.types import TPM2B_PUBLIC, TPMT_PUBLIC
from tpm2_pytss.utils import NoSuchIndex, create_ek_template

from ..enroll.attest_errors import Refusal
from ..enroll.attest_verify import ek_certificate_from_nv, load_pem_bundle
from ..enroll.ek_hygiene import check_not_roca
from ..enroll.ek_verify import VerifiedEk, verify_ek
from ..errors import EnrollmentError, KeyFileError, UsageError

# The TCG EK Credential Profile's low-range templates (L-1, L-2): the EKs whose
# certificates TPM makers provision and `tpm2_createek` makes by default.
EK_TYPES = {"rsa": "EK-RSA2048", "ecc": "EK-ECC256"}
UNVERIFIED = ("nothing shows that this key belongs to a TPM: whoever made the file may hold its private key "
              "and unwrap the key in software")
_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.*?-----END \1-----\s*", re.S)


@dataclass(frozen=True)
class EkTarget:
    """The EK to wrap for: its TCG template, its TPM public area, and what vouches for it (None: nothing)."""

    ek_type: str  # "EK-RSA2048" | "EK-ECC256"
    public: TPM2B_PUBLIC
    verified: VerifiedEk | None

    def describe(self) -> str:
        """Who vouches for this EK, for the owner to read."""
        if self.verified is None:
            return f"an EK public key nobody vouches for ({UNVERIFIED})"
        cert, anchor = self.verified.certificate, self.verified.anchor
        return (f"the EK certified by {cert.issuer.rfc4514_string() or '<empty issuer>'} (serial {cert.serial_number:x}), "
                f"which chains to {anchor.subject.rfc4514_string()}")


def _no_nv(index: int) -> bytes:
    raise NoSuchIndex(index)


def ek_public(key: Any, source: str) -> tuple[str, TPM2B_PUBLIC]:
    """The EK's TPM public area rebuilt from its public key and the standard EK template."""
    if isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048 and key.public_numbers().e == 65537:
        ek_type = EK_TYPES["rsa"]
    elif isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        ek_type = EK_TYPES["ecc"]
    else:
        raise KeyFileError(f"{source}: not an EK public key (RSA-2048 or ECC P-256 expected)")
    _, template = create_ek_template(ek_type, _no_nv)
    area: TPMT_PUBLIC = template.publicArea
    if isinstance(key, rsa.RSAPublicKey):
        area.unique.rsa = key.public_numbers().n.to_bytes(256, "big")
    else:
        numbers = key.public_numbers()
        area.unique.ecc.x = numbers.x.to_bytes(32, "big")
        area.unique.ecc.y = numbers.y.to_bytes(32, "big")
    return ek_type, TPM2B_PUBLIC(publicArea=area)


def _read_ek_file(data: bytes, source: str) -> tuple[list[x509.Certificate], Any]:
    """(certificates, public key or None) of an EK file: PEM blocks as `tpmtls key ek` writes them
    (PUBLIC KEY, then CERTIFICATE), or one DER certificate as read from the TPM's NV."""
    certs: list[x509.Certificate] = []
    public = None
    blocks = list(_BLOCK.finditer(data))
    if not blocks:
        try:
            certs.append(ek_certificate_from_nv(data, source))
        except Refusal:
            raise KeyFileError(f"{source}: no EK certificate (PEM or DER) and no PEM public key; make it with "
                               "'tpmtls key ek --out EK.pem' on the machine") from None
        return certs, None
    for block in blocks:
        label = block.group(1).decode()
        try:
            if label == "CERTIFICATE":
                certs.append(x509.load_pem_x509_certificate(block.group(0)))
            elif label == "PUBLIC KEY":
                if public is not None:
                    raise KeyFileError(f"{source}: holds two public keys; an EK file holds one EK")
                public = serialization.load_pem_public_key(block.group(0))
            else:
                raise KeyFileError(f"{source}: a PEM '{label}' is not part of an EK file (PUBLIC KEY, CERTIFICATE)")
        except ValueError:
            raise KeyFileError(f"{source}: damaged PEM '{label}'") from None
    return certs, public


def ek_target(data: bytes, roots: bytes | None = None, *, unverified: bool = False, source: str = "<EK>",
              roots_source: str = "<ek-roots>") -> EkTarget:
    """The EK of `data` once trusted: its certificate chains to `roots`, or `unverified` says to take it as it is.

    Either way a ROCA-weak RSA key is refused (its private key can be computed from the public one),
    and a public key beside a certificate must be that certificate's key.
    """
    if unverified and roots is not None:
        raise UsageError("--ek-roots and --ek-unverified: give one (the roots verify the EK; --ek-unverified "
                         "skips that)")
    if not unverified and roots is None:
        raise UsageError("--ek-roots BUNDLE: the TPM makers' CA certificates that vouch for the EK certificate "
                         f"(or --ek-unverified: {UNVERIFIED})")
    certs, public = _read_ek_file(data, source)
    verified = None
    try:
        if unverified:
            key = public if public is not None else certs[0].public_key() if certs else None
            if public is not None and certs and certs[0].public_key() != public:
                raise KeyFileError(f"{source}: its public key is not the key of the EK certificate beside it")
        else:
            if not certs:
                raise KeyFileError(f"{source}: holds no EK certificate, only a public key; 'tpmtls key ek' adds the "
                                   "certificate when the TPM has one in NV (or wrap with --ek-unverified: "
                                   f"{UNVERIFIED})")
            anchors = load_pem_bundle(roots or b"", roots_source)
            verified = verify_ek(certs[0], certs[1:], anchors, claimed=public)
            key = verified.public_key
        check_not_roca(key, "the EK")
    except Refusal as e:
        raise KeyFileError(f"{source}: {e.detail}") from None
    except EnrollmentError as e:  # the roots bundle holds no certificate
        raise UsageError(str(e)) from None
    if key is None:
        raise KeyFileError(f"{source}: no EK public key or certificate")
    ek_type, area = ek_public(key, source)
    return EkTarget(ek_type, area, verified)


__all__ = ["EK_TYPES", "EkTarget", "UNVERIFIED", "ek_public", "ek_target"]
