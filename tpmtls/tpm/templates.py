"""Key templates: the algorithms tpmtls creates and the SRK templates it shares with tpm2-openssl."""

from __future__ import annotations

from tpm2_pytss.constants import TPM2_ALG, TPM2_ECC, TPMA_OBJECT

# The parent templates TSSPrivKey (tpm2-pytss) and tpm2-openssl use for parent
# 0x40000001: ECC P-256 when the TPM has ECC, else RSA-2048. Using the very same
# objects keeps key files interchangeable with both.
from tpm2_pytss.tsskey import _parent_ecc_template as SRK_ECC  # noqa: F401, N812
from tpm2_pytss.tsskey import _parent_rsa_template as SRK_RSA  # noqa: F401, N812
from tpm2_pytss.types import (
    TPMS_ECC_PARMS,
    TPMS_RSA_PARMS,
    TPMT_ECC_SCHEME,
    TPMT_KDF_SCHEME,
    TPMT_PUBLIC,
    TPMT_RSA_SCHEME,
    TPMT_SYM_DEF_OBJECT,
    TPMU_PUBLIC_PARMS,
)

ALGORITHMS = ("ecc-p256", "ecc-p384", "rsa2048", "rsa3072")

_CURVES = {"ecc-p256": TPM2_ECC.NIST_P256, "ecc-p384": TPM2_ECC.NIST_P384}
_RSA_BITS = {"rsa2048": 2048, "rsa3072": 3072}
CURVE_NAMES = {int(TPM2_ECC.NIST_P256): "ecc-p256", int(TPM2_ECC.NIST_P384): "ecc-p384"}

_BASE = (
    TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
    | TPMA_OBJECT.SIGN_ENCRYPT
)


def key_attributes(alg: str, has_password: bool) -> TPMA_OBJECT:
    """Attributes for a key tpmtls creates.

    RSA keys also get `decrypt`: a raw RSA operation (TPM2_RSA_Decrypt, scheme NULL) over
    software PSS padding is the fallback for TPMs whose PSS salt TLS 1.3 rejects (as
    tpm2-pkcs11 does). Passwordless keys are `noDA`: without a password there is nothing
    to guess, and a DA-protected key earns lockout strikes every time the TPM is
    stopped uncleanly while it is loaded (docs/facts-tpm.md, "Dictionary-attack lockout").
    """
    attrs = _BASE
    if alg in _RSA_BITS:
        attrs |= TPMA_OBJECT.DECRYPT
    if not has_password:
        attrs |= TPMA_OBJECT.NODA
    return attrs


def key_template(alg: str, has_password: bool) -> TPMT_PUBLIC:
    """An unrestricted signing key with scheme NULL, so one key signs any hash and padding."""
    attrs = key_attributes(alg, has_password)
    if alg in _RSA_BITS:
        return TPMT_PUBLIC(
            type=TPM2_ALG.RSA,
            nameAlg=TPM2_ALG.SHA256,
            objectAttributes=attrs,
            authPolicy=b"",
            parameters=TPMU_PUBLIC_PARMS(
                rsaDetail=TPMS_RSA_PARMS(
                    symmetric=TPMT_SYM_DEF_OBJECT(algorithm=TPM2_ALG.NULL),
                    scheme=TPMT_RSA_SCHEME(scheme=TPM2_ALG.NULL),
                    keyBits=_RSA_BITS[alg],
                    exponent=0,
                )
            ),
        )
    if alg in _CURVES:
        return TPMT_PUBLIC(
            type=TPM2_ALG.ECC,
            nameAlg=TPM2_ALG.SHA256,
            objectAttributes=attrs,
            authPolicy=b"",
            parameters=TPMU_PUBLIC_PARMS(
                eccDetail=TPMS_ECC_PARMS(
                    symmetric=TPMT_SYM_DEF_OBJECT(algorithm=TPM2_ALG.NULL),
                    scheme=TPMT_ECC_SCHEME(scheme=TPM2_ALG.NULL),
                    curveID=_CURVES[alg],
                    kdf=TPMT_KDF_SCHEME(scheme=TPM2_ALG.NULL),
                )
            ),
        )
    raise ValueError(f"unknown key algorithm {alg!r}: choose one of {', '.join(ALGORITHMS)}")


def algorithm_name(public: TPMT_PUBLIC) -> str:
    """'ecc-p256', 'rsa2048' … for a public area (other sizes spelled the same way)."""
    if public.type == TPM2_ALG.RSA:
        return f"rsa{int(public.parameters.rsaDetail.keyBits)}"
    if public.type == TPM2_ALG.ECC:
        curve = int(public.parameters.eccDetail.curveID)
        return CURVE_NAMES.get(curve, f"ecc-curve-0x{curve:x}")
    return f"alg-0x{int(public.type):x}"


def same_template(public: TPMT_PUBLIC, template: TPMT_PUBLIC) -> bool:
    """True if `public` was made from `template` (everything but the unique field matches).

    Same template + same hierarchy seed ⇒ same key, so a persistent SRK that passes this
    test is interchangeable with CreatePrimary of the template (and saves that time).
    """
    a, b = TPMT_PUBLIC(), TPMT_PUBLIC()
    for dst, src in ((a, public), (b, template)):
        dst.type = src.type
        dst.nameAlg = src.nameAlg
        dst.objectAttributes = src.objectAttributes
        dst.authPolicy = src.authPolicy
        dst.parameters = src.parameters
    return a.marshal() == b.marshal()
