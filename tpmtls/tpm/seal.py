"""Small secrets sealed to one TPM: a keyedhash data object under the owner SRK.

`seal()` puts up to 128 bytes (TPM 2.0 Part 2, MAX_SYM_DATA) into a sealed data object
created under this TPM's owner-hierarchy ECC SRK (TPM2_Create with the data in
inSensitive); `unseal()` loads it under the same SRK and reads it back (TPM2_Load,
TPM2_Unseal, Part 3 §12.7). The object is fixedTPM|fixedParent, so only the TPM whose
owner seed made the SRK can ever load it: a copy of the blob on another machine is
useless. Both commands run in a session salted to the SRK with parameter encryption
(AES-128-CFB, Part 1 §21), so the secret crosses the TPM bus (or abrmd's socket)
encrypted both ways.
"""

from __future__ import annotations

from dataclasses import dataclass

from tpm2_pytss import TSS2_Exception
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_SE, TPMA_OBJECT, TPMA_SESSION
from tpm2_pytss.types import (
    TPM2B_DATA,
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPML_PCR_SELECTION,
    TPMT_PUBLIC,
    TPMT_SYM_DEF,
    TPMU_SYM_KEY_BITS,
    TPMU_SYM_MODE,
)

from ..errors import KeyFileError, UsageError
from . import rc
from .context import TpmContext
from .device import Tpm

MAX_SEALED = 128  # TPM 2.0 Part 2, 10.4.3 TPM2B_SENSITIVE_DATA: MAX_SYM_DATA bytes
_SESSION_SYM = TPMT_SYM_DEF(
    algorithm=TPM2_ALG.AES, keyBits=TPMU_SYM_KEY_BITS(aes=128), mode=TPMU_SYM_MODE(aes=TPM2_ALG.CFB)
)


@dataclass(frozen=True)
class SealedBlob:
    """A sealed data object as stored: its TPM public and private areas, and the name of
    the SRK it was made under (to say "another TPM" before the TPM is even asked)."""

    public: bytes  # TPM2B_PUBLIC, marshalled
    private: bytes  # TPM2B_PRIVATE, marshalled: the data encrypted by the SRK's seed
    srk_name: bytes


def _template() -> TPM2B_PUBLIC:
    # keyedhash with scheme NULL and neither sign nor decrypt: a sealed data object (Part 1 §27.2.3).
    # No sensitiveDataOrigin: the data is ours. noDA: there is no password to guess.
    area = TPMT_PUBLIC(type=TPM2_ALG.KEYEDHASH, nameAlg=TPM2_ALG.SHA256)
    area.objectAttributes = TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.USERWITHAUTH | TPMA_OBJECT.NODA
    area.parameters.keyedHashDetail.scheme.scheme = TPM2_ALG.NULL
    return TPM2B_PUBLIC(publicArea=area)


def _encrypted_session(ctx: TpmContext, srk: ESYS_TR) -> ESYS_TR:
    """An HMAC session salted to the SRK that encrypts the first parameter each way
    (ESYS derives the session key from a secret only the TPM can decrypt).

    continueSession is set and the caller flushes it. Measured with tpm2-abrmd 3.0.0 and
    10 helpers storing at once: with one-command sessions (the TPM closes them itself)
    22 of 90 stores failed with TPM_RC_REFERENCE_S0, "session not loaded" — the handle
    is reused by another client's session while abrmd still tracks the closed one;
    with explicit flushes, 0 of 90."""
    esapi = ctx.esapi
    session = esapi.start_auth_session(srk, ESYS_TR.NONE, TPM2_SE.HMAC, _SESSION_SYM, TPM2_ALG.SHA256)
    esapi.trsess_set_attributes(session, TPMA_SESSION.CONTINUESESSION | TPMA_SESSION.DECRYPT | TPMA_SESSION.ENCRYPT)
    return session


def _flush_quietly(ctx: TpmContext, handle: ESYS_TR) -> None:
    try:
        ctx.esapi.flush_context(handle)
    except Exception:  # noqa: BLE001 - best effort: the TPM may be gone (the pool then rebuilds the context)
        pass


def srk_name(tpm: Tpm) -> bytes:
    """The TPM name of this TPM's owner ECC SRK (same TPM, same name: it is derived from the owner seed)."""
    return tpm.pool.run("read the SRK", lambda ctx: bytes(ctx.srk("ecc")[1].get_name()))


def seal(tpm: Tpm, data: bytes) -> SealedBlob:
    """Seal `data` (1..128 bytes) to this TPM; returns what to store (nothing readable)."""
    if not 0 < len(data) <= MAX_SEALED:
        raise UsageError(f"a sealed object holds 1 to {MAX_SEALED} bytes, not {len(data)}")
    sensitive = TPM2B_SENSITIVE_CREATE()
    sensitive.sensitive.data = data

    def fn(ctx: TpmContext) -> SealedBlob:
        srk, srk_public = ctx.srk("ecc")
        session = _encrypted_session(ctx, srk)
        try:
            private, public, _, _, _ = ctx.esapi.create(
                srk, sensitive, _template(), TPM2B_DATA(), TPML_PCR_SELECTION(), session1=session
            )
        finally:
            _flush_quietly(ctx, session)
        return SealedBlob(public.marshal(), private.marshal(), bytes(srk_public.get_name()))

    return tpm.pool.run("seal a secret", fn)


def unseal(tpm: Tpm, blob: SealedBlob, source: str) -> bytes:
    """The data sealed in `blob`, or a KeyFileError naming `source` when this TPM cannot
    read it (made on another TPM, or damaged)."""
    try:
        public, _ = TPM2B_PUBLIC.unmarshal(blob.public)
        private, _ = TPM2B_PRIVATE.unmarshal(blob.private)
    except Exception:  # noqa: BLE001 - unmarshal errors share no base class
        raise KeyFileError(f"{source}: damaged sealed object") from None

    def fn(ctx: TpmContext) -> bytes:
        srk, srk_public = ctx.srk("ecc")
        if bytes(srk_public.get_name()) != blob.srk_name:
            raise KeyFileError(f"{source}: sealed to another TPM (its storage key differs from this TPM's); "
                               "it cannot be read here")
        try:
            handle = ctx.esapi.load(srk, private, public)
        except TSS2_Exception as e:
            if rc.is_context_lost(e) or rc.is_retry(e) or rc.is_object_memory(e):
                raise
            raise KeyFileError(f"{source}: this TPM cannot load the sealed object ({rc.describe(e)}); "
                               "it was made on another TPM or is damaged") from None
        session = None
        try:
            session = _encrypted_session(ctx, srk)
            return bytes(ctx.esapi.unseal(handle, session1=session))
        finally:
            if session is not None:
                _flush_quietly(ctx, session)
            _flush_quietly(ctx, handle)

    return tpm.pool.run("unseal a secret", fn)


__all__ = ["MAX_SEALED", "SealedBlob", "seal", "srk_name", "unseal"]
