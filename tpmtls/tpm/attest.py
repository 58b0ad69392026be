"""TPM side of attested enrollment: EK and its certificate, an attestation key (AK),
ActivateCredential, PCR quotes and TPM2_Certify — each one borrowed pool context.

The EK template and the NV reads come from tpm2-pytss (`create_ek_template`, `NVReadEK`),
so the EK we recreate is the one its certificate names (TCG EK Credential Profile 2.0).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from tpm2_pytss import TSS2_Exception
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_ECC, TPM2_SE, TPMA_OBJECT
from tpm2_pytss.types import (
    TPM2B_DATA,
    TPM2B_DIGEST,
    TPM2B_ENCRYPTED_SECRET,
    TPM2B_ID_OBJECT,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPML_DIGEST,
    TPML_PCR_SELECTION,
    TPMS_ECC_PARMS,
    TPMS_NV_PUBLIC,
    TPMS_PCR_SELECTION,
    TPMT_ECC_SCHEME,
    TPMT_KDF_SCHEME,
    TPMT_PUBLIC,
    TPMT_SIG_SCHEME,
    TPMT_SYM_DEF,
    TPMT_SYM_DEF_OBJECT,
    TPMU_PUBLIC_PARMS,
)
from tpm2_pytss.utils import NoSuchIndex, NVReadEK, create_ek_template

from ..errors import TpmError, UsageError
from .context import TpmContext
from .device import Tpm
from .keyfile import OWNER, KeyBlob
from .keys import TpmKey
from .templates import same_template

# EK templates tried in order, low range first (TCG EK Credential Profile 2.0, 2.2.1.4 and B.4).
EK_TYPES = {"rsa": ("EK-RSA2048", "EK-HIGH-RSA2048"), "ecc": ("EK-ECC256", "EK-HIGH-ECC256", "EK-HIGH-ECC384")}
# Where TCG Provisioning Guidance (7.8) suggests the low-range EKs be persisted; used when present and same template.
_EK_PERSISTENT = {"EK-RSA2048": 0x81010001, "EK-ECC256": 0x81010002}
PCR_BANKS = {"sha1": TPM2_ALG.SHA1, "sha256": TPM2_ALG.SHA256, "sha384": TPM2_ALG.SHA384, "sha512": TPM2_ALG.SHA512}
BANK_NAMES = {int(v): k for k, v in PCR_BANKS.items()}

_AK_ATTRS = (
    TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
    | TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.SIGN_ENCRYPT
    | TPMA_OBJECT.NODA
)


def ak_template() -> TPMT_PUBLIC:
    """A restricted ECDSA P-256/SHA-256 signing key: it signs only TPM-made structures."""
    scheme = TPMT_ECC_SCHEME(scheme=TPM2_ALG.ECDSA)
    scheme.details.ecdsa.hashAlg = TPM2_ALG.SHA256
    return TPMT_PUBLIC(
        type=TPM2_ALG.ECC,
        nameAlg=TPM2_ALG.SHA256,
        objectAttributes=_AK_ATTRS,
        authPolicy=b"",
        parameters=TPMU_PUBLIC_PARMS(
            eccDetail=TPMS_ECC_PARMS(
                symmetric=TPMT_SYM_DEF_OBJECT(algorithm=TPM2_ALG.NULL),
                scheme=scheme,
                curveID=TPM2_ECC.NIST_P256,
                kdf=TPMT_KDF_SCHEME(scheme=TPM2_ALG.NULL),
            )
        ),
    )


def _ecdsa_sha256() -> TPMT_SIG_SCHEME:
    scheme = TPMT_SIG_SCHEME(scheme=TPM2_ALG.ECDSA)
    scheme.details.any.hashAlg = TPM2_ALG.SHA256
    return scheme


@dataclass(frozen=True)
class Ek:
    """The endorsement key's public area and its certificate as read from NV (header, padding and all)."""

    kind: str
    public: TPM2B_PUBLIC
    certificate: bytes
    template: str = ""


@dataclass(frozen=True)
class Ak:
    """An attestation key (loadable blob) and the TPM's CertifyCreation of it (go-attestation's params)."""

    blob: KeyBlob
    public: bytes  # TPMT_PUBLIC
    create_data: bytes  # TPMS_CREATION_DATA
    create_attestation: bytes  # TPMS_ATTEST (creation), signed by the AK itself
    create_signature: bytes  # TPMT_SIGNATURE


def _ek_primary(ctx: TpmContext, kind: str) -> tuple[ESYS_TR, TPM2B_PUBLIC, bytes | None, bool, str]:
    """The EK of the first template of `kind` with a certificate in NV: (handle, public, cert, transient, template).

    A persistent EK with the same template is the same key and saves a CreatePrimary.
    """
    esapi = ctx.esapi
    found: tuple[bytes | None, TPM2B_PUBLIC, str] | None = None
    for name in EK_TYPES[kind]:
        try:
            cert, template = create_ek_template(name, NVReadEK(esapi))
        except ValueError:  # a high-range template without its certificate
            continue
        if found is None or (cert and not found[0]):
            found = (cert, template, name)
        if cert:
            break
    assert found is not None  # the low-range templates never raise
    cert, template, name = found
    persistent = _EK_PERSISTENT.get(name)
    if persistent is not None and ctx.has_handle(persistent):
        handle = esapi.tr_from_tpmpublic(persistent)
        public, _, _ = esapi.read_public(handle)
        if same_template(public.publicArea, template.publicArea):
            return handle, public, cert, False, name
        esapi.tr_close(handle)
    handle, public, _, _, _ = esapi.create_primary(
        TPM2B_SENSITIVE_CREATE(), template, ESYS_TR.ENDORSEMENT, TPM2B_DATA(), TPML_PCR_SELECTION()
    )
    return handle, public, cert, True, name


_HASH_NAMES = {int(TPM2_ALG.SHA256): "sha256", int(TPM2_ALG.SHA384): "sha384", int(TPM2_ALG.SHA512): "sha512"}
_POLICY_NV_INDEX = {"sha256": 0x01C07F01, "sha384": 0x01C07F02, "sha512": 0x01C07F03}
_CC_POLICY_SECRET, _CC_POLICY_OR, _CC_POLICY_AUTHORIZE_NV = 0x151, 0x171, 0x192
_RH_ENDORSEMENT = 0x4000000B


def ek_policies(hash_name: str) -> tuple[bytes, bytes, bytes]:
    """(PolicyA, PolicyC, PolicyB) of the TCG EK Credential Profile (B.6) for a name algorithm.

    A = PolicySecret(TPM_RH_ENDORSEMENT); C = PolicyAuthorizeNV(policy index I-n);
    B = PolicyOR(A, C), the authPolicy of high-range EKs. Computed by the PolicyUpdate rules
    (TPM 2.0 Part 3, 23.2.4); B equals the authPolicy of tpm2-pytss's high-range templates.
    """
    size = hashlib.new(hash_name).digest_size

    def h(*parts: bytes) -> bytes:
        return hashlib.new(hash_name, b"".join(parts)).digest()

    a = h(h(bytes(size), _CC_POLICY_SECRET.to_bytes(4, "big"), _RH_ENDORSEMENT.to_bytes(4, "big")))
    alg = {v: k for k, v in _HASH_NAMES.items()}[hash_name]
    index = TPMS_NV_PUBLIC(nvIndex=_POLICY_NV_INDEX[hash_name], nameAlg=alg, attributes=0x220F1008, authPolicy=a,
                           dataSize=2 + size)  # EK profile B.6.3: the policy index I-n as defined there
    index_name = alg.to_bytes(2, "big") + h(index.marshal())
    c = h(bytes(size), _CC_POLICY_AUTHORIZE_NV.to_bytes(4, "big"), index_name)
    b = h(bytes(size), _CC_POLICY_OR.to_bytes(4, "big"), a, c)
    return a, c, b


# Where a TPM maker stores EK certificates (TCG EK Credential Profile 2.3, 2.2.1.4 and 2.2.1.5):
# the low range, then the high range's templates tpmtls knows (EK_TYPES).
EK_CERT_INDICES = {"RSA 2048": 0x01C00002, "ECC P-256": 0x01C0000A, "RSA 2048 (high range)": 0x01C00012,
                   "ECC P-256 (high range)": 0x01C00014, "ECC P-384 (high range)": 0x01C00016}


def ek_certificates(tpm: Tpm) -> dict[str, bytes]:
    """The EK certificates in NV, as stored ({kind: bytes}; an absent one is no error).

    Only NV reads: no CreatePrimary, which takes seconds for an RSA EK on a hardware TPM.
    """

    def fn(ctx: TpmContext) -> dict[str, bytes]:
        read = NVReadEK(ctx.esapi)
        found = {}
        for kind, index in EK_CERT_INDICES.items():
            try:
                found[kind] = bytes(read(index))
            except NoSuchIndex:
                continue
        return found

    return tpm.pool.run("read the EK certificates", fn)


def read_ek(tpm: Tpm, kind: str = "rsa") -> Ek:
    """The EK of `kind` ('rsa' or 'ecc') and its certificate from NV; a clear error if there is none."""
    if kind not in EK_TYPES:
        raise UsageError(f"unknown EK type {kind!r}: choose one of {', '.join(EK_TYPES)}")

    def fn(ctx: TpmContext) -> Ek:
        handle, public, cert, transient, template = _ek_primary(ctx, kind)
        if transient:
            ctx.esapi.flush_context(handle)
        if not cert:
            raise TpmError(
                f"{tpm.tcti}: this TPM has no {kind.upper()} EK certificate in NV "
                "(a manufacturer provisions one; on swtpm use 'swtpm_setup --create-ek-cert')"
            )
        return Ek(kind, public, bytes(cert), template)

    return tpm.pool.run(f"read {kind} EK", fn)


def create_ak(tpm: Tpm) -> Ak:
    """Create an AK under the SRK and have it certify its own creation (TPM2_CertifyCreation)."""
    template = TPM2B_PUBLIC(publicArea=ak_template())

    def fn(ctx: TpmContext) -> Ak:
        esapi = ctx.esapi
        parent, _ = ctx.srk("ecc")
        private, public, creation_data, creation_hash, ticket = esapi.create(
            parent, TPM2B_SENSITIVE_CREATE(), template, TPM2B_DATA(), TPML_PCR_SELECTION()
        )
        blob = KeyBlob(source="<attestation key>", parent=OWNER, public=public, private=private)
        handle = ctx.key(blob)
        attest, sig = esapi.certify_creation(
            handle, handle, TPM2B_DATA(), creation_hash, _ecdsa_sha256(), ticket,
            session1=ESYS_TR.PASSWORD, session2=ESYS_TR.NONE,
        )
        return Ak(
            blob=blob,
            public=public.publicArea.marshal(),
            create_data=creation_data.creationData.marshal(),
            create_attestation=bytes(attest),
            create_signature=sig.marshal(),
        )

    return tpm.pool.run("create attestation key", fn)


def activate_credential(tpm: Tpm, ak: KeyBlob, ek_kind: str, credential: bytes, secret: bytes) -> bytes:
    """TPM2_ActivateCredential: recover the secret an Attestation CA encrypted to our EK for our AK.

    Only the TPM holding both the EK and the AK named in the credential can do this
    (TPM 2.0 Part 1, 24). The EK's policy: A (PolicySecret on the endorsement hierarchy)
    for low-range EKs, B = PolicyOR(A, C) for high-range ones, satisfied through A.
    """
    try:
        cred_blob, _ = TPM2B_ID_OBJECT.unmarshal(credential)
        enc_secret, _ = TPM2B_ENCRYPTED_SECRET.unmarshal(secret)
    except Exception:  # noqa: BLE001 - tpm2-pytss raises TSS2_Exception or ValueError on garbage
        raise TpmError("the Attestation CA's credential is malformed (not TPM2B_ID_OBJECT/ENCRYPTED_SECRET)") from None

    def fn(ctx: TpmContext) -> bytes:
        esapi = ctx.esapi
        ek, public, _, transient, _ = _ek_primary(ctx, ek_kind)
        ak_handle = ctx.key(ak)
        name_alg = int(public.publicArea.nameAlg)
        hash_name = _HASH_NAMES.get(name_alg)
        if hash_name is None:
            raise TpmError(f"{tpm.tcti}: the EK's name algorithm 0x{name_alg:x} is not one tpmtls knows")
        policy_a, policy_c, policy_b = ek_policies(hash_name)
        auth_policy = bytes(public.publicArea.authPolicy)
        if auth_policy not in (policy_a, policy_b):
            raise TpmError(f"{tpm.tcti}: the EK's authPolicy is neither the TCG policy A nor B; cannot use it")
        session = esapi.start_auth_session(
            ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY, TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), TPM2_ALG(name_alg)
        )
        try:
            esapi.policy_secret(ESYS_TR.ENDORSEMENT, session, b"", b"", b"", 0)
            if auth_policy == policy_b:
                esapi.policy_or(session, TPML_DIGEST([TPM2B_DIGEST(policy_a), TPM2B_DIGEST(policy_c)]))
            out = esapi.activate_credential(ak_handle, ek, cred_blob, enc_secret,
                                            session1=ESYS_TR.PASSWORD, session2=session)
            return bytes(out)
        finally:
            try:
                esapi.flush_context(session)
            except TSS2_Exception:
                pass  # a successful ActivateCredential already consumed the policy session
            if transient:
                esapi.flush_context(ek)

    return tpm.pool.run("activate credential", fn, ak)


def pcr_selection(selection: dict[str, list[int]]) -> TPML_PCR_SELECTION:
    """{'sha256': [0, 1, 7]} → TPML_PCR_SELECTION (banks in the order given)."""
    items = []
    for bank, pcrs in selection.items():
        sel = TPMS_PCR_SELECTION(hash=PCR_BANKS[bank], sizeofSelect=3)
        bits = bytearray(3)
        for p in pcrs:
            bits[p // 8] |= 1 << (p % 8)
        sel.pcrSelect = bytes(bits)
        items.append(sel)
    return TPML_PCR_SELECTION(items)


def read_pcrs(tpm: Tpm, selection: dict[str, list[int]]) -> dict[str, dict[int, bytes]]:
    """Current PCR values, {bank: {pcr: digest}}; TPM2_PCR_Read returns at most 8 per call."""

    def fn(ctx: TpmContext) -> dict[str, dict[int, bytes]]:
        out: dict[str, dict[int, bytes]] = {}
        for bank, pcrs in selection.items():
            values = out.setdefault(bank, {})
            ordered = sorted(set(pcrs))
            for i in range(0, len(ordered), 8):
                chunk = ordered[i:i + 8]
                _, _, digests = ctx.esapi.pcr_read(pcr_selection({bank: chunk}))
                got = [bytes(d) for d in digests]
                if len(got) != len(chunk):
                    raise TpmError(f"{tpm.tcti}: PCR bank {bank} is not active on this TPM")
                values.update(zip(chunk, got, strict=True))
        return out

    return tpm.pool.run("read PCRs", fn)


def quote(tpm: Tpm, ak: KeyBlob, nonce: bytes, selection: dict[str, list[int]]) -> tuple[bytes, bytes]:
    """TPM2_Quote by the AK over `nonce`: (TPMS_ATTEST, TPMT_SIGNATURE) as bytes."""

    def fn(ctx: TpmContext) -> tuple[bytes, bytes]:
        handle = ctx.key(ak)
        attest, sig = ctx.esapi.quote(handle, pcr_selection(selection), TPM2B_DATA(nonce), _ecdsa_sha256())
        return bytes(attest), sig.marshal()

    return tpm.pool.run("quote PCRs", fn, ak)


def certify(tpm: Tpm, ak: KeyBlob, key: TpmKey, qualifying_data: bytes) -> tuple[bytes, bytes]:
    """TPM2_Certify of `key` by the AK with `qualifying_data`: (TPMS_ATTEST, TPMT_SIGNATURE) bytes."""

    def fn(ctx: TpmContext) -> tuple[bytes, bytes]:
        key_handle = ctx.key(key.blob, key._password)
        ak_handle = ctx.key(ak)
        attest, sig = ctx.esapi.certify(key_handle, ak_handle, TPM2B_DATA(qualifying_data), _ecdsa_sha256(),
                                        session1=ESYS_TR.PASSWORD, session2=ESYS_TR.PASSWORD)
        return bytes(attest), sig.marshal()

    return tpm.pool.run("certify key", fn, key.blob)


__all__ = ["Ak", "Ek", "EK_TYPES", "activate_credential", "ak_template", "certify", "create_ak", "ek_policies",
           "pcr_selection", "quote", "read_ek", "read_pcrs"]
