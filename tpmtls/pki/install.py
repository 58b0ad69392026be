"""`tpmtls certs install`: a TPM client certificate into tpmtls's certs.d, checked first.

The directory is `<root>/<host[:port]>/` with Docker's names (`ca.crt`, `client.cert`,
`client.key`), root `/etc/tpmtls/certs.d` — not Docker's own certs.d, where a TPM key
makes stock dockerd fail every pull and push to that host (docs/formats.md, "certs.d"). Everything is
validated before anything is written, and a new directory appears whole (rename).
"""

from __future__ import annotations

import datetime
import os
import shutil
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID

from .._files import write_atomic
from ..errors import UsageError

DEFAULT_ROOT = Path("/etc/tpmtls/certs.d")
SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def check_hostport(hostport: str) -> str:
    """HOST[:PORT] by distribution's domain grammar: never a path, never `..`."""
    from ..registry.reference import valid_hostport

    if not valid_hostport(hostport) or hostport.startswith("."):
        raise UsageError(f"{hostport!r}: not a registry HOST[:PORT] (like registry.example.com:5000)")
    return hostport


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory, not a {what} file") from None
    except OSError as e:
        raise UsageError(f"{path}: cannot read {what}: {e.strerror}") from None


def check_client_cert(cert_path: str, public_key: PublicKeyTypes) -> x509.Certificate:
    """The certificate parses, is for `public_key`, is in date and allows clientAuth."""
    try:
        cert = x509.load_pem_x509_certificates(_read(cert_path, "certificate"))[0]
    except ValueError:
        raise UsageError(f"{cert_path}: not a PEM certificate") from None
    spki = public_key.public_bytes(*SPKI)
    if cert.public_key().public_bytes(*SPKI) != spki:
        raise UsageError(f"{cert_path}: this certificate is for another key than the one given with --key")
    now = datetime.datetime.now(datetime.timezone.utc)
    if now < cert.not_valid_before_utc:
        raise UsageError(f"{cert_path}: not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    if now > cert.not_valid_after_utc:
        raise UsageError(f"{cert_path}: expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if ExtendedKeyUsageOID.CLIENT_AUTH not in eku and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in eku:
            raise UsageError(f"{cert_path}: its extended key usage does not allow clientAuth (TLS client)")
    except x509.ExtensionNotFound:
        pass
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if not ku.digital_signature:
            raise UsageError(f"{cert_path}: its key usage does not allow digitalSignature (TLS client)")
    except x509.ExtensionNotFound:
        pass
    return cert


def check_ca(ca_path: str) -> None:
    try:
        x509.load_pem_x509_certificates(_read(ca_path, "CA certificate"))
    except ValueError:
        raise UsageError(f"{ca_path}: not a PEM CA certificate") from None


def install(hostport: str, cert: str, key: str, ca: str, root: str | os.PathLike[str] | None = None,
            tcti: str | None = None) -> Path:
    """Validate, then write ca.crt, client.cert, client.key (0600) into <root>/<hostport>/."""
    from ..tpm.keyfile import read_key_reference

    check_hostport(hostport)
    blob = read_key_reference(key)  # a clear error if it is not a TPM key file or handle
    if blob.public is not None:
        public_key = serialization.load_pem_public_key(blob.public.to_pem())
    else:  # a persistent handle: only the TPM knows its public key
        import tpmtls

        public_key = tpmtls.connect(tcti).load_key(key).public_key()
    check_client_cert(cert, public_key)
    check_ca(ca)
    files = {"ca.crt": (_read(ca, "CA certificate"), 0o644), "client.cert": (_read(cert, "certificate"), 0o644),
             "client.key": (_read(key, "key") if blob.public is not None else blob.to_pem(), 0o600)}
    base = Path(root) if root is not None else Path(os.environ.get("TPMTLS_CERTS_D") or DEFAULT_ROOT)
    target = base / hostport
    try:
        base.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            stage = Path(tempfile.mkdtemp(prefix=f".{hostport}.", dir=base))
            try:
                for name, (data, mode) in files.items():
                    write_atomic(stage / name, data, mode)
                stage.chmod(0o755)
                os.rename(stage, target)  # the directory appears complete or not at all
            except BaseException:
                shutil.rmtree(stage, ignore_errors=True)
                raise
        else:
            if not target.is_dir():
                raise UsageError(f"{target}: exists and is not a directory")
            for name, (data, mode) in files.items():
                write_atomic(target / name, data, mode)
    except OSError as e:
        raise UsageError(f"{target}: cannot write: {e.strerror or e}") from None
    return target


__all__ = ["DEFAULT_ROOT", "check_hostport", "install"]
