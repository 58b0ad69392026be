"""Key references as the TLS factories take them, and one-line reasons for failed loads."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

from ..errors import KeyFileError, TlsSetupError, TpmtlsError
from ..provider import last_error
from ..tpm.keyfile import is_tpm_key, parse_key_bytes, tpm_key_der
from ..tpm.keys import AnyTpmKey, TpmKey

#: What a `key=` argument accepts (docs/formats.md, "Key references"): a TPM key file path, "handle:0x81…",
#: or a key object.
KeyRef = Union[str, "os.PathLike[str]", TpmKey]


@contextmanager
def key_file(key: KeyRef, *, der: bool = False) -> Iterator[str]:
    """A path OpenSSL can read for any key reference (a handle or key object gets a temp file).

    The temp file holds only what a key file holds (a TPM-wrapped blob or a handle):
    never private key material. `der`: a TPM key as DER, which OpenSSL decodes without
    a passphrase callback (for PEM it would prompt on the terminal when none is set);
    otherwise PEM, the only form the stdlib's load_cert_chain reads.
    """
    data: bytes
    if isinstance(key, TpmKey):
        data = key.to_pem()
    elif isinstance(key, str) and key.startswith("handle:"):
        from ..tpm.keyfile import handle_pem, parse_handle

        data = handle_pem(parse_handle(key))
    else:
        path = Path(key)
        if not path.is_file():
            raise KeyFileError(f"{path}: no such key file")
        data = path.read_bytes()
        pem = b"-----BEGIN " in data
        if not is_tpm_key(data) or (pem and not der):
            yield str(path)  # a software key, or the PEM wanted: OpenSSL reads the file itself
            return
        if not pem and not der:
            data = parse_key_bytes(data, str(path)).to_pem()
    if der:
        data = tpm_key_der(data, source(key)) or data
    with tempfile.TemporaryDirectory(prefix="tpmtls-key-") as tmp:
        path = Path(tmp) / ("key.der" if der else "key.pem")
        path.write_bytes(data)
        yield str(path)


def as_bytes(password: bytes | str | None) -> bytes | None:
    return password.encode() if isinstance(password, str) else password


def source(key: KeyRef) -> str:
    """How a key reference is named in messages."""
    return key.reference if isinstance(key, TpmKey) else os.fspath(key)


def explain(e: Exception, cert: str | os.PathLike[str], key: KeyRef, tcti: str | None,
            password: bytes | None) -> TlsSetupError:
    """One line for a failed load: the TPM's reason if there was one, else find out.

    Python's load_cert_chain reports any failure as OSError when errno happens to be
    set, so the exception says little; the certificate and key are checked here.
    """
    reason = last_error()
    if reason:
        return TlsSetupError(reason)
    from cryptography import x509

    from ..tpm import connect

    try:
        public = x509.load_pem_x509_certificate(Path(cert).read_bytes()).public_key()
    except (OSError, ValueError) as err:
        return TlsSetupError(f"{cert}: not a readable PEM certificate ({err})")
    try:
        tpm_key: AnyTpmKey = key if isinstance(key, (TpmKey)) else connect(tcti).load_key(key, password)  # type: ignore[assignment]
    except TpmtlsError as err:
        return TlsSetupError(str(err))
    if tpm_key.public_key() != public:
        return TlsSetupError(f"{cert}: this certificate does not belong to the key {source(key)}")
    return TlsSetupError(f"loading {cert} with key {source(key)} failed: {e}")
