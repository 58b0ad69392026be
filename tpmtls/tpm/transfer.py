"""Key transfer to one TPM: wrap a software key to a TPM's EK; only that TPM can import it.

Owner side (no TPM): `wrap_key` duplicates the key to the EK's public area with
tpm2-pytss `utils.wrap` (the TPM's duplication format: seed encrypted to the EK,
AES-CFB + HMAC outer wrapper). Machine side: `import_wrapped` re-wraps that outer layer
from the EK to the SRK *inside* the TPM (TPM2_Rewrap, TPM 2.0 Part 3 §13.2, authorized
with the EK's policy: PolicySecret(TPM_RH_ENDORSEMENT)) and imports it under the SRK
(TPM2_Import). The result is an ordinary TSS2 key file with parent 0x40000001 that
every loader (ours, tpm2-openssl, tpm2-tools) takes; importing under the EK itself would
give a key whose every load needs the EK's policy session, and TPM2_Duplicate out of
the EK is impossible for a key without a duplication policy. The clear key exists only
in the owner's PEM and inside the TPM.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat import asn1
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_SE
from tpm2_pytss.types import (
    TPM2B_DATA,
    TPM2B_ENCRYPTED_SECRET,
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPML_PCR_SELECTION,
    TPMT_PUBLIC,
    TPMT_SYM_DEF,
    TPMT_SYM_DEF_OBJECT,
)
from tpm2_pytss.utils import NoSuchIndex, NVReadEK, create_ek_template, wrap

from .._files import check_writable, write_atomic
from ..errors import KeyFileError
from .context import TpmContext
from .device import Tpm, importable_objects
from .keyfile import OWNER, KeyBlob, _unarmor
from .keys import AnyTpmKey, make_key

WRAPPED_LABEL = "TPMTLS WRAPPED KEY"
# The TCG EK Credential Profile's low-range templates (L-1, L-2): the EKs whose
# certificates TPM makers provision and `tpm2_createek` makes by default.
EK_TYPES = {"rsa": "EK-RSA2048", "ecc": "EK-ECC256"}
_VERSION = 1


@asn1.sequence
class _WrappedDer:
    version: int
    ek_type: bytes  # b"EK-RSA2048" | b"EK-ECC256"
    ek_name: bytes  # TPM name of the EK the key is wrapped for
    public: bytes  # TPM2B_PUBLIC of the key
    duplicate: bytes  # TPM2B_PRIVATE, outer-wrapped to the EK (no inner wrapper)
    seed: bytes  # TPM2B_ENCRYPTED_SECRET, encrypted to the EK


@dataclass(frozen=True)
class EndorsementKey:
    """A TPM's EK: its type, public area, and the manufacturer's certificate if in NV."""

    ek_type: str
    public: TPM2B_PUBLIC
    certificate: bytes | None  # DER

    @property
    def name(self) -> bytes:
        return bytes(self.public.get_name())

    def to_pem(self) -> bytes:
        """Public key PEM, followed by the EK certificate PEM when the TPM holds one."""
        out = self.public.to_pem()
        if self.certificate:
            try:
                cert = x509.load_der_x509_certificate(self.certificate)
                out += cert.public_bytes(serialization.Encoding.PEM)
            except ValueError:
                pass  # some TPMs pad the NV area; the public key is what wrapping needs
        return out


def _no_nv(index: int) -> bytes:
    raise NoSuchIndex(index)


def _create_ek(ctx: TpmContext, ek_type: str) -> tuple[ESYS_TR, TPM2B_PUBLIC, bytes | None]:
    """CreatePrimary of the EK from the template in NV (or the profile's default)."""
    cert, template = create_ek_template(ek_type, NVReadEK(ctx.esapi))
    handle, public, _, _, _ = ctx.esapi.create_primary(
        TPM2B_SENSITIVE_CREATE(), template, ESYS_TR.ENDORSEMENT, TPM2B_DATA(), TPML_PCR_SELECTION()
    )
    return handle, public, cert


def read_ek(tpm: Tpm, kind: str = "rsa") -> EndorsementKey:
    """This TPM's EK of `kind` ('rsa' or 'ecc'), recreated from its template (same key every time)."""
    ek_type = EK_TYPES[kind]

    def fn(ctx: TpmContext) -> EndorsementKey:
        handle, public, cert = _create_ek(ctx, ek_type)
        ctx.esapi.flush_context(handle)
        return EndorsementKey(ek_type, public, cert)

    return tpm.pool.run("read the endorsement key", fn)


def ek_public_from_pem(data: bytes, source: str = "<EK>") -> tuple[str, TPM2B_PUBLIC]:
    """The EK's TPM public area rebuilt from its PEM public key and the standard EK template."""
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        try:  # an EK certificate alone is fine too
            key = x509.load_pem_x509_certificate(data).public_key()
        except ValueError:
            raise KeyFileError(f"{source}: no PEM public key or certificate; make it with 'tpmtls key ek --out EK.pem'") from None
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


def wrap_key(pem: bytes, ek_pem: bytes, *, pem_password: bytes | None = None,
             source: str = "<pem>", ek_source: str = "<EK>") -> bytes:
    """Wrap a software RSA/EC private key so that only the TPM holding this EK can import it.

    Returns the blob (PEM 'TPMTLS WRAPPED KEY'): the key's public area and its private
    part encrypted to the EK, nothing readable without that TPM.
    """
    ek_type, ek_public = ek_public_from_pem(ek_pem, ek_source)
    # the checks and attributes of `tpmtls key import`; passwordless, so noDA
    public, sensitive = importable_objects(pem, pem_password, source)
    _, duplicate, seed = wrap(ek_public.publicArea, public, sensitive)
    der = asn1.encode_der(_WrappedDer(
        version=_VERSION,
        ek_type=ek_type.encode(),
        ek_name=bytes(ek_public.get_name()),
        public=public.marshal(),
        duplicate=duplicate.marshal(),
        seed=seed.marshal(),
    ))
    body = base64.encodebytes(der)
    return f"-----BEGIN {WRAPPED_LABEL}-----\n".encode() + body + f"-----END {WRAPPED_LABEL}-----\n".encode()


@dataclass(frozen=True)
class WrappedKey:
    """A parsed blob."""

    ek_type: str
    ek_name: bytes
    public: TPM2B_PUBLIC
    duplicate: TPM2B_PRIVATE
    seed: TPM2B_ENCRYPTED_SECRET


def parse_wrapped(data: bytes, source: str = "<blob>") -> WrappedKey:
    """Decode a 'TPMTLS WRAPPED KEY' PEM, naming what is wrong."""
    if b"-----BEGIN " not in data:
        raise KeyFileError(f"{source}: not a wrapped key (no PEM '{WRAPPED_LABEL}'); make it with 'tpmtls key wrap'")
    label, der = _unarmor(data, source)
    if label != WRAPPED_LABEL:
        raise KeyFileError(f"{source}: PEM '{label}' is not a wrapped key; expected '{WRAPPED_LABEL}' from 'tpmtls key wrap'")
    try:
        w = asn1.decode_der(_WrappedDer, der)
        ek_type = bytes(w.ek_type).decode("ascii")
        public, _ = TPM2B_PUBLIC.unmarshal(bytes(w.public))
        duplicate, _ = TPM2B_PRIVATE.unmarshal(bytes(w.duplicate))
        seed, _ = TPM2B_ENCRYPTED_SECRET.unmarshal(bytes(w.seed))
    except Exception as e:  # noqa: BLE001 - asn1 and unmarshal errors share no base class
        reason = str(e).splitlines()[0][:100] if str(e) else type(e).__name__
        raise KeyFileError(f"{source}: damaged wrapped key ({reason})") from None
    if w.version != _VERSION or ek_type not in EK_TYPES.values():
        raise KeyFileError(f"{source}: wrapped key version {w.version} / {ek_type!r} is not one this tpmtls reads")
    return WrappedKey(ek_type, bytes(w.ek_name), public, duplicate, seed)


def import_wrapped(tpm: Tpm, data: bytes, path: str | os.PathLike[str] | None = None, *,
                   source: str = "<blob>", overwrite: bool = False) -> AnyTpmKey:
    """Import a blob from `wrap_key` into this TPM (it must hold the EK it was wrapped for).

    Writes an ordinary TSS2 PRIVATE KEY (parent: the owner SRK) to `path` atomically.
    """
    out = check_writable(path, overwrite) if path is not None else None
    w = parse_wrapped(data, source)

    def fn(ctx: TpmContext) -> TPM2B_PRIVATE:
        esapi = ctx.esapi
        ek, ek_public, _ = _create_ek(ctx, w.ek_type)
        session = None
        try:
            mine = bytes(ek_public.get_name())
            if mine != w.ek_name:
                raise KeyFileError(
                    f"{source}: wrapped for another TPM (EK name {w.ek_name.hex()[:16]}…, this TPM's "
                    f"{w.ek_type} is {mine.hex()[:16]}…); ask the key's owner to wrap it for this "
                    "machine's EK ('tpmtls key ek --out EK.pem' here)"
                )
            srk, _ = ctx.srk("ecc")
            # The EK's authPolicy is PolicySecret(TPM_RH_ENDORSEMENT) (EK Credential Profile 2.0, B.3.3).
            session = esapi.start_auth_session(
                ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY, TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), TPM2_ALG.SHA256
            )
            esapi.policy_secret(ESYS_TR.ENDORSEMENT, session, expiration=0)
            duplicate, seed = esapi.rewrap(ek, srk, w.duplicate, w.public.get_name(), w.seed, session1=session)
            return esapi.import_(srk, TPM2B_DATA(), w.public, duplicate, seed, TPMT_SYM_DEF_OBJECT(algorithm=TPM2_ALG.NULL))
        finally:
            if session is not None:
                try:
                    esapi.flush_context(session)
                except Exception:  # noqa: BLE001 - a used policy session may already be gone
                    pass
            esapi.flush_context(ek)

    private = tpm.pool.run(f"import wrapped key {source}", fn)
    blob = KeyBlob(source=str(out) if out is not None else "<imported key>", parent=OWNER,
                   public=w.public, private=private, empty_auth=True)
    if out is not None:
        write_atomic(out, blob.to_pem())
    return make_key(tpm.pool, blob, w.public)


def read_file(path: str | os.PathLike[str], what: str) -> bytes:
    """File bytes, or a KeyFileError naming the file."""
    p = Path(path)
    try:
        return p.read_bytes()
    except OSError as e:
        raise KeyFileError(f"{p}: cannot read {what}: {e.strerror}") from None


__all__ = ["EndorsementKey", "EK_TYPES", "WrappedKey", "import_wrapped", "parse_wrapped", "read_ek", "wrap_key"]
