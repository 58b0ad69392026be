"""Is this the endorsement key of a genuine TPM? The one answer the Attestation CA (`/attest`) and
`tpmtls key wrap` both rely on.

An EK certificate must chain to the TPM makers' roots the owner trusts, be in date, carry a
key that is not ROCA-weak, and be neither revoked by its maker's CRL nor on the deny list;
a public key shown beside it must be that certificate's key. What passes is a key whose
private half was made inside, and never leaves, a TPM of a maker the owner trusts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .attest_verify import ek_urn, refuse, verify_chain
from .ek_hygiene import EkCrls, EkDenyList, check_not_roca

_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class VerifiedEk:
    """An EK that passed: its certificate, the path to the trusted root, its key and identifier."""

    certificate: x509.Certificate
    path: list[x509.Certificate]  # the certificate first, the trust anchor last
    public_key: Any
    identifier: str  # urn:ek:sha256:<base64>, as AK and client certificates carry it

    @property
    def anchor(self) -> x509.Certificate:
        return self.path[-1]


def verify_ek(certificate: x509.Certificate, intermediates: Sequence[x509.Certificate],
              roots: Sequence[x509.Certificate], *, claimed: Any = None, crls: EkCrls | None = None,
              deny: EkDenyList | None = None, what: str = "the EK certificate") -> VerifiedEk:
    """Check an EK certificate (raises a `Refusal` naming the first thing wrong)."""
    path = verify_chain(certificate, intermediates, roots, what)
    for extra in intermediates:
        if extra not in path:
            raise refuse(f"{extra.subject.rfc4514_string() or 'a certificate'} sent with {what} is not on its chain")
    try:
        key = certificate.public_key()
    except Exception:  # noqa: BLE001 - an unsupported or malformed key in a certificate that chains
        raise refuse(f"{what}'s public key is unusable") from None
    check_not_roca(key, "the EK")
    if crls is not None:
        crls.check(path, what)
    identifier = ek_urn(key)
    if deny is not None:
        deny.check([identifier], "the EK")
    if claimed is not None and claimed.public_bytes(*_SPKI) != key.public_bytes(*_SPKI):
        raise refuse(f"the EK public key given is not the key of {what}")
    return VerifiedEk(certificate, path, key, identifier)


__all__ = ["VerifiedEk", "verify_ek"]
