"""What an OpenSSL signature request means for a TPM key: hash, padding, PSS salt, scheme name.

The shim provider passes OpenSSL's parameters through unchanged (digest name, RSA
padding mode, PSS salt length code, MGF1 digest); this module turns them into one
`key.sign(...)` call, and names the TLS SignatureScheme that resulted. It sits beside
the key objects because it is signing policy, not OpenSSL plumbing.
"""

from __future__ import annotations

from typing import Any, Union

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from ..errors import TpmtlsError

# OpenSSL's RSA_PKCS1_PSS_PADDING and RSA_PSS_SALTLEN_* (rsa.h)
PAD_PSS = 6
SALT_DIGEST, SALT_AUTO, SALT_MAX, SALT_AUTO_DIGEST_MAX = -1, -2, -3, -4

_BY_NAME: dict[str, type[hashes.HashAlgorithm]] = {
    "SHA1": hashes.SHA1, "SHA256": hashes.SHA256, "SHA2256": hashes.SHA256, "SHA384": hashes.SHA384,
    "SHA2384": hashes.SHA384, "SHA512": hashes.SHA512, "SHA2512": hashes.SHA512,
}
_BY_SIZE: dict[int, type[hashes.HashAlgorithm]] = {
    20: hashes.SHA1, 32: hashes.SHA256, 48: hashes.SHA384, 64: hashes.SHA512}
_SUPPORTED = "SHA-1, SHA-256, SHA-384 or SHA-512"

SigningKey = Union[rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey]


class UnsupportedSignature(TpmtlsError):
    """OpenSSL asked for a signature the TPM key cannot make (digest, padding, salt)."""


def hash_for(name: str | None, digest_len: int | None, key: object) -> hashes.HashAlgorithm:
    """The hash OpenSSL named, else the one a prehashed digest's length implies, else the key's default."""
    text = (name or "").upper().replace("-", "").replace("_", "")
    if text:
        if text not in _BY_NAME:
            raise UnsupportedSignature(f"digest {name} is not one the TPM signs: use {_SUPPORTED}")
        return _BY_NAME[text]()
    if digest_len is not None:
        if digest_len not in _BY_SIZE:
            raise UnsupportedSignature(
                f"a {digest_len}-byte digest is not one the TPM signs: use {_SUPPORTED} "
                "(or name the digest, e.g. -pkeyopt digest:sha256)")
        return _BY_SIZE[digest_len]()
    return hashes.SHA384() if getattr(key, "key_size", 0) == 384 else hashes.SHA256()


def pss_salt(saltlen: int) -> Any:
    """cryptography's salt length for an OpenSSL PSS salt code (signing side).

    For signing, "auto" and "max" both mean the largest salt; "auto-digestmax"
    (OpenSSL 3.1) means the digest length, as "digest" does (RFC 8446 4.2.3 needs it).
    """
    if saltlen in (SALT_DIGEST, SALT_AUTO_DIGEST_MAX):
        return padding.PSS.DIGEST_LENGTH
    if saltlen in (SALT_AUTO, SALT_MAX):
        return padding.PSS.MAX_LENGTH
    if saltlen < 0:
        raise UnsupportedSignature(f"RSA-PSS salt length code {saltlen} is not one OpenSSL defines")
    return saltlen


def sign_for_openssl(key: SigningKey, data: bytes, md: str | None, pad_mode: int, saltlen: int,
                     mgf1: str | None, prehashed: bool) -> tuple[bytes, str]:
    """Sign `data` (a message, or a digest when `prehashed`) as OpenSSL asked; returns (signature, scheme)."""
    alg = hash_for(md, len(data) if prehashed else None, key)
    if prehashed and len(data) != alg.digest_size:
        raise UnsupportedSignature(f"a {len(data)}-byte digest does not match {alg.name}")
    algorithm = utils.Prehashed(alg) if prehashed else alg
    if isinstance(key, rsa.RSAPrivateKey):
        pad: padding.AsymmetricPadding
        if pad_mode == PAD_PSS:
            mgf = hash_for(mgf1, None, key) if mgf1 else alg
            pad = padding.PSS(padding.MGF1(mgf), pss_salt(saltlen))
            scheme = f"rsa_pss_rsae_{alg.name}"
        else:
            pad, scheme = padding.PKCS1v15(), f"rsa_pkcs1_{alg.name}"
        return key.sign(data, pad, algorithm), scheme
    return key.sign(data, ec.ECDSA(algorithm)), f"ecdsa_{key.curve.name}_{alg.name}"
