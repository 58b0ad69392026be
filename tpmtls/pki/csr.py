"""Certificate signing requests signed by a TPM key (through cryptography's CSR builder)."""

from __future__ import annotations

import base64
import ipaddress
from typing import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ..errors import UsageError

# openssl -subj spellings that RFC 4514 does not know.
_EXTRA_ATTRS = {"emailAddress": NameOID.EMAIL_ADDRESS, "serialNumber": NameOID.SERIAL_NUMBER}


def parse_subject(text: str) -> x509.Name:
    """'CN=client,O=Acme' (RFC 4514) or '/O=Acme/CN=client' (openssl -subj) → x509.Name."""
    s = text.strip()
    try:
        if s.startswith("/"):
            parts = [p for p in s.split("/") if p]
            rdns = []
            for part in parts:
                attr, sep, value = part.partition("=")
                if not sep or not value:
                    raise ValueError(f"'{part}' is not ATTR=value")
                rdns.append(x509.Name.from_rfc4514_string(f"{attr}={_escape(value)}", _EXTRA_ATTRS).rdns[0])
            name = x509.Name(rdns)
        else:
            name = x509.Name.from_rfc4514_string(s, _EXTRA_ATTRS)
    except ValueError as e:
        why = f" ({e})" if str(e) else ""
        raise UsageError(f"subject {text!r} is not a distinguished name like 'CN=client,O=Acme'{why}") from None
    if not list(name):
        raise UsageError(f"subject {text!r} is empty; write it like 'CN=client'")
    return name


def _escape(value: str) -> str:
    return "".join("\\" + c if c in ',+"\\<>;=' else c for c in value)


def parse_san(values: Iterable[str]) -> list[x509.GeneralName]:
    """'DNS:a,IP:127.0.0.1', 'URI:…', 'email:…' (openssl's spelling), repeatable."""
    names: list[x509.GeneralName] = []
    for value in values:
        for item in filter(None, (v.strip() for v in value.split(","))):
            kind, sep, rest = item.partition(":")
            kind = kind.upper()
            if not sep or not rest:
                raise UsageError(f"SAN {item!r}: write it as DNS:name, IP:address, URI:uri or email:addr")
            if kind == "DNS":
                names.append(x509.DNSName(rest))
            elif kind == "IP":
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(rest)))
                except ValueError:
                    raise UsageError(f"SAN {item!r}: {rest!r} is not an IP address") from None
            elif kind == "URI":
                names.append(x509.UniformResourceIdentifier(rest))
            elif kind == "EMAIL":
                names.append(x509.RFC822Name(rest))
            else:
                raise UsageError(f"SAN {item!r}: unknown type {kind}; use DNS, IP, URI or email")
    return names


def build_csr(
    key: object, subject: str | x509.Name, sans: Iterable[str] = (), *, algorithm: hashes.HashAlgorithm | None = None
) -> x509.CertificateSigningRequest:
    """A CSR for `key` (any cryptography private key, TPM or not), self-signed by it.

    SHA-384 for P-384 keys, SHA-256 otherwise, unless `algorithm` says.
    """
    name = subject if isinstance(subject, x509.Name) else parse_subject(subject)
    builder = x509.CertificateSigningRequestBuilder().subject_name(name)
    alt = parse_san(sans)
    if alt:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    if algorithm is None:
        is_p384 = isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384
        algorithm = hashes.SHA384() if is_p384 else hashes.SHA256()
    return builder.sign(key, algorithm)  # type: ignore[arg-type]


# ecdsa-with-SHA224/256/384/512 (RFC 5758 3.2: their AlgorithmIdentifier has no parameters).
_ECDSA_SIG_OID_PREFIX = bytes.fromhex("06082a8648ce3d0403")
_NULL = b"\x05\x00"


def load_pem_csr(data: bytes) -> x509.CertificateSigningRequest:
    """A PEM CSR; also one whose ECDSA signature AlgorithmIdentifier carries NULL parameters.

    tpm2-openssl writes ecdsa-with-SHA256 with NULL parameters, which RFC 5758 omits and
    cryptography refuses to parse; OpenSSL accepts it (`openssl req -verify`). The signature
    covers only certificationRequestInfo, so dropping the NULL changes nothing signed.
    Raises ValueError for anything that is not such a CSR.
    """
    try:
        return x509.load_pem_x509_csr(data)
    except ValueError as first:
        try:
            der = base64.b64decode(b"".join(data.split(b"-----BEGIN CERTIFICATE REQUEST-----", 1)[1]
                                            .split(b"-----END CERTIFICATE REQUEST-----", 1)[0].split()), validate=True)
        except (IndexError, ValueError):
            raise first from None
        fixed = _without_null_ecdsa_params(der)
        if fixed is None:
            raise first from None
        return x509.load_der_x509_csr(fixed)


def _tlv(der: bytes, off: int) -> tuple[int, int, int]:
    """(tag, start of value, end of value) of the DER element at `off`."""
    tag, first = der[off], der[off + 1]
    if first < 0x80:
        return tag, off + 2, off + 2 + first
    n = first & 0x7F
    if not 1 <= n <= 3:
        raise ValueError("bad DER length")
    length = int.from_bytes(der[off + 2:off + 2 + n], "big")
    return tag, off + 2 + n, off + 2 + n + length


def _der(tag: int, value: bytes) -> bytes:
    n, size = len(value), (len(value).bit_length() + 7) // 8
    length = bytes([n]) if n < 0x80 else bytes([0x80 | size]) + n.to_bytes(size, "big")
    return bytes([tag]) + length + value


def _without_null_ecdsa_params(der: bytes) -> bytes | None:
    """The CSR re-encoded with `SEQUENCE { ecdsa-with-SHAx }` for `SEQUENCE { ecdsa-with-SHAx, NULL }`, else None."""
    try:
        tag, start, end = _tlv(der, 0)
        if tag != 0x30 or end != len(der):
            return None
        _, _, info_end = _tlv(der, start)
        alg_tag, alg_start, alg_end = _tlv(der, info_end)
        _, oid_start, oid_end = _tlv(der, alg_start)
        oid = der[alg_start:oid_end]
        if alg_tag != 0x30 or not oid.startswith(_ECDSA_SIG_OID_PREFIX) or der[oid_end:alg_end] != _NULL:
            return None
        return _der(0x30, der[start:info_end] + _der(0x30, oid) + der[alg_end:end])
    except IndexError:
        return None
