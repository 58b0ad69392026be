"""TPM keys as `cryptography` private keys: every library that takes one takes ours.

Hashing happens in software; only the final digest goes to the TPM (one TPM2_Sign).
Private numbers and serialization raise: the key cannot leave the TPM.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, TypeVar, Union

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPMA_OBJECT
from tpm2_pytss.types import TPM2B_PUBLIC, TPMT_RSA_DECRYPT, TPMT_SIG_SCHEME

from ..errors import KeyNotExportable, TpmError, UsageError
from .context import TpmContext
from .keyfile import KeyBlob, parse_handle
from .pool import Pool
from .templates import algorithm_name

Buffer = Union[bytes, bytearray, memoryview]

_TPM_HASH = {
    "sha1": TPM2_ALG.SHA1,
    "sha256": TPM2_ALG.SHA256,
    "sha384": TPM2_ALG.SHA384,
    "sha512": TPM2_ALG.SHA512,
}


def _digest(data: Buffer, algorithm: Any) -> tuple[bytes, hashes.HashAlgorithm]:
    """Hash in software (or take a Prehashed digest) and return it with its algorithm."""
    if isinstance(algorithm, utils.Prehashed):
        alg = algorithm._algorithm
        if len(data) != alg.digest_size:
            raise ValueError(f"prehashed digest is {len(data)} bytes, {alg.name} needs {alg.digest_size}")
        digest = bytes(data)
    else:
        alg = algorithm
        h = hashes.Hash(alg)
        h.update(data)
        digest = h.finalize()
    if alg.name not in _TPM_HASH:
        raise UnsupportedAlgorithm(f"TPM keys sign SHA-1/256/384/512 digests, not {alg.name}")
    return digest, alg


def _scheme(alg: TPM2_ALG, hash_name: str) -> TPMT_SIG_SCHEME:
    scheme = TPMT_SIG_SCHEME(scheme=alg)
    scheme.details.any.hashAlg = _TPM_HASH[hash_name]
    return scheme


_Key = TypeVar("_Key", bound="TpmKey")  # typing.Self needs Python 3.11; we support 3.10

class TpmKey:
    """What TPM keys have beyond the cryptography interface: reference, file, persist."""

    def __init__(self, pool: Pool, blob: KeyBlob, public: TPM2B_PUBLIC, password: bytes | None = None) -> None:
        self._pool = pool
        self._blob = blob
        self._tpm_public = public
        self._password = password
        self._public_key: Any = serialization.load_pem_public_key(public.to_pem())

    @property
    def pool(self) -> Pool:
        return self._pool

    @property
    def blob(self) -> KeyBlob:
        return self._blob

    @property
    def reference(self) -> str:
        """Where the key came from: a file path or 'handle:0x81…'."""
        return self._blob.source

    @property
    def algorithm(self) -> str:
        return algorithm_name(self._tpm_public.publicArea)

    @property
    def attributes(self) -> TPMA_OBJECT:
        return TPMA_OBJECT(self._tpm_public.publicArea.objectAttributes)

    @property
    def tpm_public(self) -> TPM2B_PUBLIC:
        return self._tpm_public

    def to_pem(self) -> bytes:
        """The key file: TSS2 PRIVATE KEY (wrapped by the TPM: safe to store) or handle form."""
        return self._blob.to_pem()

    def persist(self, handle: int | str) -> TpmKey:
        """Copy the key to a persistent handle (TPM2_EvictControl); returns the key there."""
        value = parse_handle(handle if isinstance(handle, str) else hex(handle), owner_range=True)

        def fn(ctx: TpmContext) -> bytes:
            if ctx.has_handle(value):
                raise UsageError(
                    f"persistent handle 0x{value:08x} is already in use; pick another or free it "
                    f"with 'tpm2_evictcontrol -c 0x{value:08x}'"
                )
            if self._blob.is_persistent:
                raise UsageError(f"{self.reference} is already persistent")
            key_handle = ctx.key(self._blob, self._password)
            ctx.esapi.evict_control(ESYS_TR.RH_OWNER, key_handle, value)
            return bytes(ctx.esapi.tr_get_name(key_handle))

        name = self._pool.run("persist", fn, self._blob)
        blob = KeyBlob(source=f"handle:0x{value:08x}", handle=value, name=name, empty_auth=self._blob.empty_auth)
        return type(self)(self._pool, blob, self._tpm_public, self._password)

    def _sign_with(self, scheme: TPMT_SIG_SCHEME, digest: bytes) -> Any:
        return self._pool.sign(self._blob, digest, scheme, self._password)

    def private_numbers(self) -> Any:
        raise KeyNotExportable(f"{self.reference}: the private key lives in the TPM and cannot be exported")

    def private_bytes(self, *args: Any, **kwargs: Any) -> bytes:
        raise KeyNotExportable(
            f"{self.reference}: the private key lives in the TPM and cannot be serialized; "
            "use the key file (to_pem()) to refer to it"
        )

    def __copy__(self: _Key) -> _Key:
        return self  # immutable: nothing to copy

    def __deepcopy__(self: _Key, memo: dict[int, Any]) -> _Key:
        return self

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.algorithm} {self.reference}>"


class TpmRSAPrivateKey(TpmKey, rsa.RSAPrivateKey):
    """An RSA key in the TPM: PKCS#1 v1.5 and PSS signatures, OAEP/PKCS#1 decryption."""

    @property
    def key_size(self) -> int:
        return int(self._tpm_public.publicArea.parameters.rsaDetail.keyBits)

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public_key

    def sign(self, data: Buffer, padding: padding.AsymmetricPadding, algorithm: Any) -> bytes:
        digest, alg = _digest(data, algorithm)
        if isinstance(padding, _PKCS1v15):
            sig = self._sign_with(_scheme(TPM2_ALG.RSASSA, alg.name), digest)
            return bytes(sig.signature.rsassa.sig)
        if isinstance(padding, _PSS):
            return self._sign_pss(digest, alg, padding)
        raise UnsupportedAlgorithm(f"TPM RSA keys sign with PKCS1v15 or PSS, not {padding.name}")

    def _sign_pss(self, digest: bytes, alg: hashes.HashAlgorithm, pad: padding.PSS) -> bytes:
        mgf_alg = pad.mgf._algorithm  # type: ignore[attr-defined]
        salt_len = _salt_length(pad, alg, self.key_size)
        pss = self._pool.pss
        # The TPM's own PSS uses MGF1 with the signing hash and (on most TPMs) a salt of
        # the digest length — what TLS 1.3 requires (RFC 8446, 4.2.3). Use it when it
        # fits; check once per TPM that it really does, else fall back to raw RSA.
        if pss.native_fits(alg.name, mgf_alg.name, salt_len, alg.digest_size):
            tpm_sig = self._sign_with(_scheme(TPM2_ALG.RSAPSS, alg.name), digest)
            sig = bytes(tpm_sig.signature.rsapss.sig)
            if not pss.needs_check():
                return sig
            try:
                self.public_key().verify(
                    sig, digest, _PSS(mgf=_MGF1(alg), salt_length=alg.digest_size), utils.Prehashed(alg)
                )
                pss.learn(digest_salt=True)
                return sig
            except InvalidSignature:
                pss.learn(digest_salt=False)  # this TPM salts otherwise (e.g. maximum)
        return self._sign_raw_pss(digest, alg, mgf_alg, salt_len)

    def _sign_raw_pss(
        self, digest: bytes, alg: hashes.HashAlgorithm, mgf_alg: hashes.HashAlgorithm, salt_len: int
    ) -> bytes:
        if not self.attributes & TPMA_OBJECT.DECRYPT:
            raise TpmError(
                f"{self.reference}: this PSS signature needs a raw RSA operation, but the key was created "
                "without the 'decrypt' attribute; create it with 'tpmtls key create'"
            )
        em = emsa_pss_encode(digest, alg, mgf_alg, salt_len, self.key_size)
        raw = TPMT_RSA_DECRYPT(scheme=TPM2_ALG.NULL)
        out = self._pool.rsa_decrypt(self._blob, em, raw, self._password)
        return out.rjust(self.key_size // 8, b"\0")

    def decrypt(self, ciphertext: bytes, padding: padding.AsymmetricPadding) -> bytes:
        if isinstance(padding, _OAEP):
            if padding._label:
                raise UnsupportedAlgorithm("OAEP labels are not supported with TPM keys")
            if padding.algorithm.name != padding.mgf._algorithm.name:  # type: ignore[attr-defined]
                raise UnsupportedAlgorithm("the TPM's OAEP uses the same hash for MGF1 and the label")
            scheme = TPMT_RSA_DECRYPT(scheme=TPM2_ALG.OAEP)
            scheme.details.oaep.hashAlg = _TPM_HASH[padding.algorithm.name]
        elif isinstance(padding, _PKCS1v15):
            scheme = TPMT_RSA_DECRYPT(scheme=TPM2_ALG.RSAES)
        else:
            raise UnsupportedAlgorithm(f"TPM RSA keys decrypt OAEP or PKCS1v15, not {padding.name}")
        return self._pool.rsa_decrypt(self._blob, ciphertext, scheme, self._password)


class TpmECPrivateKey(TpmKey, ec.EllipticCurvePrivateKey):
    """An EC key in the TPM: ECDSA signatures, DER-encoded (r, s) like cryptography's."""

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public_key.curve

    @property
    def key_size(self) -> int:
        return self.curve.key_size

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public_key

    def sign(self, data: Buffer, signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise UnsupportedAlgorithm("TPM EC keys sign with ECDSA only")
        digest, alg = _digest(data, signature_algorithm.algorithm)
        # Keep the TPMT_SIGNATURE referenced while reading it: tpm2-pytss's nested views
        # point into its memory and do not keep it alive.
        tpm_sig = self._sign_with(_scheme(TPM2_ALG.ECDSA, alg.name), digest)
        r = int.from_bytes(bytes(tpm_sig.signature.ecdsa.signatureR), "big")
        s = int.from_bytes(bytes(tpm_sig.signature.ecdsa.signatureS), "big")
        return utils.encode_dss_signature(r, s)

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        raise UnsupportedAlgorithm("ECDH with a TPM key is not supported: tpmtls EC keys are sign-only")


_PKCS1v15, _PSS, _OAEP, _MGF1 = padding.PKCS1v15, padding.PSS, padding.OAEP, padding.MGF1


def _salt_length(pad: padding.PSS, alg: hashes.HashAlgorithm, key_bits: int) -> int:
    em_len = (key_bits - 1 + 7) // 8
    max_salt = em_len - alg.digest_size - 2
    salt = pad._salt_length  # type: ignore[attr-defined]
    if salt is padding.PSS.DIGEST_LENGTH:
        return alg.digest_size
    if salt is padding.PSS.MAX_LENGTH:
        return max_salt
    if salt is padding.PSS.AUTO:
        raise ValueError("PSS.AUTO is for verification only; sign with DIGEST_LENGTH or MAX_LENGTH")
    if not isinstance(salt, int) or not 0 <= salt <= max_salt:
        raise ValueError(f"PSS salt length {salt} does not fit a {key_bits}-bit key with {alg.name}")
    return salt


def _mgf1(seed: bytes, length: int, alg: hashes.HashAlgorithm) -> bytes:
    out = b""
    counter = 0
    while len(out) < length:
        out += hashlib.new(alg.name, seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    return out[:length]


def emsa_pss_encode(
    m_hash: bytes, alg: hashes.HashAlgorithm, mgf_alg: hashes.HashAlgorithm, salt_len: int, key_bits: int
) -> bytes:
    """EMSA-PSS-ENCODE (RFC 8017, 9.1.1), left-padded to the modulus length for raw RSA.

    cryptography exposes no raw PSS encoder; the TPM then performs the RSA private
    operation on the encoded message (TPM2_RSA_Decrypt, scheme NULL).
    """
    em_bits = key_bits - 1
    em_len = (em_bits + 7) // 8
    h_len = alg.digest_size
    if em_len < h_len + salt_len + 2:
        raise ValueError("PSS encoding error: key too small for this hash and salt")
    salt = os.urandom(salt_len)
    h = hashlib.new(alg.name, b"\0" * 8 + m_hash + salt).digest()
    db = b"\0" * (em_len - salt_len - h_len - 2) + b"\x01" + salt
    masked = bytes(a ^ b for a, b in zip(db, _mgf1(h, em_len - h_len - 1, mgf_alg), strict=True))
    first = masked[0] & (0xFF >> (8 * em_len - em_bits))
    em = bytes([first]) + masked[1:] + h + b"\xbc"
    return em.rjust(key_bits // 8, b"\0")


def make_key(pool: Pool, blob: KeyBlob, public: TPM2B_PUBLIC, password: bytes | None = None) -> "AnyTpmKey":
    """The right key class for a public area."""
    if public.publicArea.type == TPM2_ALG.RSA:
        return TpmRSAPrivateKey(pool, blob, public, password)
    if public.publicArea.type == TPM2_ALG.ECC:
        return TpmECPrivateKey(pool, blob, public, password)
    raise TpmError(f"{blob.source}: not an RSA or EC key (TPM type 0x{int(public.publicArea.type):x})")


AnyTpmKey = Union[TpmRSAPrivateKey, TpmECPrivateKey]
"""What create/import/load return: narrow with isinstance, as with cryptography's loaders."""

__all__ = ["AnyTpmKey", "TpmKey", "TpmRSAPrivateKey", "TpmECPrivateKey", "make_key", "emsa_pss_encode"]
