"""Doctor's look at both certs.d roots: each registry's CAs and client pair, as Docker reads them.

For each `<root>/<host[:port]>/`: Docker's pairing rules hold; every CA parses and is in date;
the client certificate belongs to its key (a TPM key file's public part is in the file, so no
TPM is needed), is in date, and — warned at less than a third of its lifetime left — is not
about to expire; a TPM key sits in tpmtls's root, never in Docker's, where it makes stock
dockerd fail every pull and push to that host.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from .._files import read_bounded
from ..docker.files import docker_root, read_cert_dir, tpmtls_root
from ..errors import TpmtlsError
from ..tpm.keyfile import is_tpm_key_file, read_key_reference
from .findings import FAILED, INFO, OK, WARNING, Finding

RENEW_AT = 1 / 3  # warn when less than this share of a certificate's lifetime is left


@dataclass
class Seen:
    """The findings, and every certificate's notBefore (the clock must be past them)."""

    findings: list[Finding] = field(default_factory=list)
    not_before: list[tuple[datetime.datetime, str]] = field(default_factory=list)


def check_all(now: datetime.datetime | None = None) -> Seen:
    seen = Seen()
    now = now or datetime.datetime.now(datetime.timezone.utc)
    for root, ours in ((tpmtls_root(), True), (docker_root(), False)):
        hosts = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        if not hosts:
            hint = " (tpmtls certs install HOST[:PORT] …)" if ours else ""
            seen.findings.append(Finding("certs.d", INFO, str(root), f"{root}: no registry directories{hint}"))
        for host in hosts:
            _check_host(host, ours, now, seen)
    return seen


def _check_host(directory: Path, ours: bool, now: datetime.datetime, seen: Seen) -> None:
    subject = str(directory)

    def add(status: str, message: str) -> None:
        seen.findings.append(Finding("certs.d", status, subject, f"{directory}: {message}"))

    try:
        entry = read_cert_dir(directory)
    except TpmtlsError as e:
        seen.findings.append(Finding("certs.d", FAILED, subject, str(e)))
        return
    problems = len(seen.findings)
    cas = []
    for ca_path in entry.cas:
        ca = _load(ca_path, add)
        if ca is not None:
            cas.append((ca_path, ca))
            seen.not_before.append((ca.not_valid_before_utc, str(ca_path)))
            _validity(ca, f"{ca_path.name} (CA)", now, add, renew="replace the CA file with its successor")
    said = []
    for cert_path, key_path in entry.pairs:
        tpm_key = is_tpm_key_file(key_path)
        if tpm_key and not ours:
            dest = tpmtls_root() / directory.name
            add(FAILED, f"{key_path.name} is a TPM key in Docker's certs.d: stock dockerd fails every pull and push "
                f"to {directory.name} ('tls: failed to parse private key'); move it: mkdir -p {dest} && "
                f"mv {cert_path} {key_path} {dest}/")
        cert = _load(cert_path, add)
        if cert is None:
            continue
        seen.not_before.append((cert.not_valid_before_utc, str(cert_path)))
        key = _public_key(key_path, tpm_key, add)
        if key is not None and _spki(cert.public_key()) != _spki(key):
            add(FAILED, f"{cert_path.name} does not belong to {key_path.name} (another key's certificate): "
                "install the pair again (tpmtls certs install … --cert C --key K)")
        _validity(cert, cert_path.name, now, add, renew="renew it (tpmtls enroll …, or your CA) and install it again")
        issuer = next((p.name for p, ca in cas if _issued_by(cert, ca)), None)
        kind = "TPM key" if tpm_key else "software key"
        said.append(f"{cert_path.name} + {key_path.name} ({kind}), issued by "
                    f"{issuer or cert.issuer.rfc4514_string()}, {_life(cert, now)}")
    if len(seen.findings) == problems:  # nothing wrong: one line for the directory
        what = "; ".join(said) or "no client certificate (server verification only)"
        cas_said = ", ".join(p.name for p, _ in cas) or "no CA file (the system's CAs)"
        add(OK, f"{what}; CAs: {cas_said}")


def _load(path: Path, add) -> x509.Certificate | None:  # type: ignore[no-untyped-def]
    try:
        return x509.load_pem_x509_certificates(read_bounded(path))[0]
    except OSError as e:
        add(FAILED, f"{path.name}: cannot read ({e.strerror})")
    except ValueError:
        add(FAILED, f"{path.name}: not a PEM certificate (Docker would refuse this directory)")
    return None


def _public_key(path: Path, tpm_key: bool, add) -> PublicKeyTypes | None:  # type: ignore[no-untyped-def]
    """The key's public half: from a TPM key file's public area, or a software key; None if unknowable here."""
    try:
        if tpm_key:
            blob = read_key_reference(path)
            if blob.public is None:
                return None  # the handle form: its public part is in the TPM only
            return serialization.load_pem_public_key(blob.public.to_pem())
        return serialization.load_pem_private_key(read_bounded(path), None).public_key()
    except TypeError:
        return None  # a software key with a passphrase: Docker cannot use it either, but that is for Docker to say
    except (OSError, ValueError, TpmtlsError) as e:
        add(FAILED, f"{path.name}: not a usable key ({e})")
        return None


def _spki(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
        return True
    except Exception:  # noqa: BLE001 - any reason it does not verify means "not this CA"
        return False


def _validity(cert: x509.Certificate, name: str, now: datetime.datetime, add, renew: str) -> None:  # type: ignore[no-untyped-def]
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now > end:
        add(FAILED, f"{name} expired on {end:%Y-%m-%d %H:%M} UTC: {renew}")
    elif now < start:
        add(FAILED, f"{name} is not valid before {start:%Y-%m-%d %H:%M} UTC (is the clock right?)")
    elif (end - now) < (end - start) * RENEW_AT:
        add(WARNING, f"{name} {_life(cert, now)}, less than a third of its life: {renew}")


def _life(cert: x509.Certificate, now: datetime.datetime) -> str:
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    total = (end - start).total_seconds() or 1
    left = max(0.0, (end - now).total_seconds())
    return f"valid until {end:%Y-%m-%d %H:%M} UTC ({left / total:.0%} of its life left)"


__all__ = ["RENEW_AT", "Seen", "check_all"]
