"""Key references: `TSS2 PRIVATE KEY` files, persistent handles and their small PEM form.

A key reference is what a user passes wherever a private key is expected (docs/formats.md,
"Key references").
This module only parses and writes them; nothing here talks to the TPM.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat import asn1
from tpm2_pytss.tsskey import TSSPrivKey
from tpm2_pytss.types import TPM2B_PRIVATE, TPM2B_PUBLIC

from ..errors import KeyFileError

TSS2_LABEL = "TSS2 PRIVATE KEY"
# Our PEM form of a persistent handle, for APIs that only take a key *file*
# (ssl.SSLContext.load_cert_chain, Docker's client.key). DER: SEQUENCE { handle
# INTEGER, name OCTET STRING } — the TPM name pins the file to the key it was made for.
HANDLE_LABEL = "TPMTLS KEY HANDLE"
OWNER = 0x40000001
PERSISTENT_MIN, PERSISTENT_MAX = 0x81000000, 0x81FFFFFF
OWNER_PERSISTENT_MAX = 0x817FFFFF  # 0x818…: platform range (TPM 2.0 Part 2, 7.5)
#: Key files are well under 4 KiB; the provider's decoder reads at most this much too.
MAX_KEY_FILE = 64 * 1024

# A PEM block: its label, its body, and no END line when the file was cut short.
_PEM = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)(?:-----END \1-----|\Z)", re.S)
# The first block labelled as a TPM key, wherever it is (a certificate may come first).
_TPM_PEM = re.compile(_PEM.pattern.replace(b"[A-Z0-9 ]+", f"{TSS2_LABEL}|{HANDLE_LABEL}".encode(), 1), re.S)


@asn1.sequence
class _HandleDer:
    handle: int
    name: bytes


@dataclass(frozen=True)
class KeyBlob:
    """Everything needed to load one key into a TPM context, plus where it came from."""

    source: str
    parent: int = OWNER
    public: TPM2B_PUBLIC | None = None  # file keys
    private: TPM2B_PRIVATE | None = None  # file keys
    empty_auth: bool = True
    handle: int | None = None  # persistent keys
    name: bytes | None = None  # expected TPM name of a persistent key, if known

    @property
    def is_persistent(self) -> bool:
        return self.handle is not None

    @property
    def key_id(self) -> str:
        """Stable id of the key across contexts and processes (not secret: all public data)."""
        h = hashlib.sha256()
        if self.handle is not None:
            h.update(b"handle\0%08x\0" % self.handle + (self.name or b""))
        else:
            assert self.public is not None and self.private is not None
            h.update(b"file\0%08x\0" % self.parent + self.public.marshal() + self.private.marshal())
        return h.hexdigest()[:32]

    def to_pem(self) -> bytes:
        """The key file bytes: a TSS2 PRIVATE KEY, or the handle form."""
        if self.handle is not None:
            return handle_pem(self.handle, self.name or b"")
        tss = TSSPrivKey(self.private, self.public, self.empty_auth, self.parent)
        return tss.to_pem()


def parse_handle(text: str, *, owner_range: bool = False) -> int:
    """'0x81000002' or 'handle:0x81000002' → int; persistent range only."""
    s = text[len("handle:"):] if text.startswith("handle:") else text
    try:
        value = int(s, 16) if s.lower().startswith("0x") else int(s, 0)
    except ValueError:
        raise KeyFileError(f"{text!r} is not a TPM handle: write it like 0x81000002") from None
    top = OWNER_PERSISTENT_MAX if owner_range else PERSISTENT_MAX
    if not PERSISTENT_MIN <= value <= top:
        raise KeyFileError(
            f"{text!r} is not a persistent handle: use 0x{PERSISTENT_MIN:08x}..0x{top:08x}"
        )
    return value


def handle_pem(handle: int, name: bytes = b"") -> bytes:
    der = asn1.encode_der(_HandleDer(handle=handle, name=name))
    body = base64.encodebytes(der).replace(b"\n", b"")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return b"".join(
        [f"-----BEGIN {HANDLE_LABEL}-----\n".encode()]
        + [line + b"\n" for line in lines]
        + [f"-----END {HANDLE_LABEL}-----\n".encode()]
    )


def read_key_reference(ref: str | os.PathLike[str]) -> KeyBlob:
    """Parse a key reference: 'handle:0x81…' or the path of a key file (PEM or DER)."""
    if isinstance(ref, str) and ref.startswith("handle:"):
        return KeyBlob(source=ref, handle=parse_handle(ref))
    path = Path(ref)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such key file") from None
    except IsADirectoryError:
        raise KeyFileError(f"{path}: is a directory, not a key file") from None
    except OSError as e:
        raise KeyFileError(f"{path}: cannot read key file: {e.strerror}") from None
    return parse_key_bytes(data, str(path))


def is_tpm_key(data: bytes) -> bool:
    """Do these key-file bytes hold a TPM key: a TSS2 PRIVATE KEY or the handle form, PEM or DER?

    The one test for "only tpmtls can use this key" (Docker's files, the CA, the TLS key
    loader). PEM is judged by its label, so a damaged body still counts and the parser
    names the damage; DER has no label, so it must decode as one of the two structures.
    """
    if _TPM_PEM.search(data):
        return True
    if data[:1] != b"\x30":
        return False
    try:
        parse_key_bytes(data)
    except KeyFileError:
        return False
    return True


def is_tpm_key_file(path: str | os.PathLike[str]) -> bool:
    """`is_tpm_key` of a file's contents; False when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return is_tpm_key(f.read(MAX_KEY_FILE))
    except OSError:
        return False


def tpm_key_der(data: bytes, source: str = "<key>") -> bytes | None:
    """The DER of a TPM key file (a PEM one unarmored, a DER one as it is); None for any other key.

    Raises KeyFileError naming `source` when a TPM-labelled PEM block is damaged.
    """
    if _TPM_PEM.search(data):
        return _unarmor(data, source, _TPM_PEM)[1]
    return data if is_tpm_key(data) else None


def parse_key_bytes(data: bytes, source: str = "<key>") -> KeyBlob:
    """Decode TSS2 PRIVATE KEY or handle-form bytes, PEM or DER, naming what is wrong."""
    if not data.strip():
        raise KeyFileError(f"{source}: file is empty; expected a {TSS2_LABEL} PEM (make one with 'tpmtls key create')")
    if b"-----BEGIN " in data:
        label, der = _unarmor(data, source, _TPM_PEM if _TPM_PEM.search(data) else _PEM)
    elif data[:1] == b"\x30":
        label, der = None, data
    else:
        raise KeyFileError(f"{source}: not a PEM or DER key file; expected a {TSS2_LABEL}")
    if label in (None, TSS2_LABEL):
        try:
            tss = TSSPrivKey.from_der(der)
        except Exception as e:  # noqa: BLE001 - asn1 and unmarshal errors have no common base class
            if label is None:
                return _parse_handle_der(der, source)
            raise KeyFileError(f"{source}: damaged {TSS2_LABEL} ({_reason(e)})") from None
        return KeyBlob(
            source=source,
            parent=int(tss.parent),
            public=tss.public,
            private=tss.private,
            empty_auth=bool(tss.empty_auth),
        )
    if label == HANDLE_LABEL:
        return _parse_handle_der(der, source)
    if "PRIVATE KEY" in label:
        raise KeyFileError(
            f"{source}: holds a software key (PEM '{label}'), not a TPM key; "
            f"move it into the TPM with 'tpmtls key import {source} --out KEY'"
        )
    raise KeyFileError(f"{source}: PEM label '{label}' is not a key; expected {TSS2_LABEL}")


def _unarmor(data: bytes, source: str, pattern: re.Pattern[bytes] = _PEM) -> tuple[str, bytes]:
    m = pattern.search(data)
    if not m:
        raise KeyFileError(f"{source}: malformed PEM header")
    label = m.group(1).decode()
    if not m.group(0).rstrip().endswith(b"-----") or b"-----END " not in m.group(0):
        raise KeyFileError(f"{source}: truncated PEM: no '-----END {label}-----' line")
    body = re.sub(rb"\s+", b"", m.group(2))
    try:
        der = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError(f"{source}: damaged PEM: the base64 body does not decode") from None
    if not der:
        raise KeyFileError(f"{source}: PEM '{label}' has an empty body")
    return label, der


def _parse_handle_der(der: bytes, source: str) -> KeyBlob:
    try:
        h = asn1.decode_der(_HandleDer, der)
    except Exception as e:  # noqa: BLE001 - asn1 errors share no base class
        raise KeyFileError(f"{source}: not a TSS2 key or key handle ({_reason(e)})") from None
    return KeyBlob(source=source, handle=parse_handle(hex(h.handle)), name=bytes(h.name) or None)


def _reason(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:120]
