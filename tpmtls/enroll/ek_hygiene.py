"""EK hygiene: refuse weak (ROCA), deny-listed and maker-revoked endorsement keys.

ROCA (CVE-2017-15361; Nemec et al., "The Return of Coppersmith's Attack", CCS 2017):
Infineon's RSA key generator made primes p = k*M + (65537^a mod M), M a primorial, so
every such modulus n lies, modulo each small prime r, in the subgroup that 65537
generates mod r. A random modulus passes that test for all the primes below with
probability far under 2^-80 (the paper's false-positive estimate); a ROCA key always
does. Affected TPMs' EK certificates chain to real maker roots, so a chain check alone
lets anyone who factors one such EK enroll a software "TPM".
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from .attest_errors import EnrollError
from .attest_verify import refuse

# The primes of the published fingerprint test (the paper's detection tool and roca-detect use these).
ROCA_PRIMES = (3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97, 101, 103,
               107, 109, 113, 127, 131, 137, 139, 149, 151, 157, 163, 167)
GENERATOR = 65537


def _subgroup(prime: int) -> frozenset[int]:
    """{65537^k mod prime}: the residues a ROCA prime (and so its modulus) can take mod `prime`."""
    seen, x = set(), 1
    while x not in seen:
        seen.add(x)
        x = x * GENERATOR % prime
    return frozenset(seen)


_SUBGROUPS = {r: _subgroup(r) for r in ROCA_PRIMES}


def roca_fingerprint(modulus: int) -> bool:
    """True if an RSA modulus carries the ROCA fingerprint (every residue in 65537's subgroup)."""
    return all(modulus % r in _SUBGROUPS[r] for r in ROCA_PRIMES)


def check_not_roca(key: Any, what: str) -> None:
    """Refuse an RSA public key made by the vulnerable Infineon generator."""
    if isinstance(key, rsa.RSAPublicKey) and roca_fingerprint(key.public_numbers().n):
        raise refuse(f"{what} is an RSA key with the ROCA fingerprint (CVE-2017-15361): its private key can be "
                     "computed from the public one, so it proves nothing; the TPM needs a firmware update and a new key")


@dataclass
class _Watched:
    """A file reloaded whenever its modification time or size changes, so edits apply without a restart."""

    path: Path
    stamp: tuple[int, int] = (0, -1)

    def changed(self) -> bool:
        try:
            st = os.stat(self.path)
        except OSError as e:
            raise EnrollError(f"{self.path}: cannot read: {e.strerror}") from None
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self.stamp:
            return False
        self.stamp = stamp
        return True


@dataclass
class EkDenyList:
    """`--ek-deny FILE`: one EK identifier per line (`urn:ek:sha256:…`, as AK and client certificates carry
    it); blank lines and `#` comments ignored."""

    file: _Watched
    entries: frozenset[str] = frozenset()

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "EkDenyList":
        deny = cls(_Watched(Path(path)))
        deny.refresh()
        return deny

    def refresh(self) -> None:
        if not self.file.changed():
            return
        entries = set()
        try:
            lines = self.file.path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise EnrollError(f"{self.file.path}: cannot read the EK deny list ({e})") from None
        for n, line in enumerate(lines, 1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            if not text.startswith("urn:ek:sha256:") or len(text) < 20:
                raise EnrollError(f"{self.file.path}:{n}: not an EK identifier; write urn:ek:sha256:<base64>, one per line")
            entries.add(text)
        self.entries = frozenset(entries)

    def check(self, identifiers: Sequence[str], what: str) -> None:
        self.refresh()
        for ident in identifiers:
            if ident in self.entries:
                raise refuse(f"{what} {ident} is on the EK deny list ({self.file.path})", "unauthorized")


@dataclass
class EkCrls:
    """`--ek-crls FILE`: TPM makers' CRLs (PEM, one or more). An EK certificate (or an intermediate above it)
    whose serial a CRL of its issuer lists — the CRL's signature checked against that issuer — is refused."""

    file: _Watched
    crls: list[x509.CertificateRevocationList] = field(default_factory=list)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "EkCrls":
        crls = cls(_Watched(Path(path)))
        crls.refresh()
        return crls

    def refresh(self) -> None:
        if not self.file.changed():
            return
        try:
            data = self.file.path.read_bytes()
        except OSError as e:
            raise EnrollError(f"{self.file.path}: cannot read the EK CRLs: {e.strerror}") from None
        out = []
        marker = b"-----BEGIN X509 CRL-----"
        try:
            if marker in data:
                for part in data.split(marker)[1:]:
                    out.append(x509.load_pem_x509_crl(marker + part.split(b"-----END X509 CRL-----")[0]
                                                      + b"-----END X509 CRL-----\n"))
            elif data.strip():
                out.append(x509.load_der_x509_crl(data))
        except ValueError as e:
            raise EnrollError(f"{self.file.path}: not a CRL file (PEM or DER): {e}") from None
        if not out:
            raise EnrollError(f"{self.file.path}: holds no CRL")
        self.crls = out

    def check(self, path: Sequence[x509.Certificate], what: str) -> None:
        """`path`: leaf first, trust anchor last (as `verify_chain` returns it)."""
        self.refresh()
        for cert, issuer in zip(path, path[1:], strict=False):
            for crl in self.crls:
                if crl.issuer != cert.issuer:
                    continue
                try:
                    signed = crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
                except (TypeError, ValueError):
                    signed = False
                if signed and crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
                    name = what if cert is path[0] else f"{what}'s issuer {cert.subject.rfc4514_string()}"
                    raise refuse(f"{name} (serial {cert.serial_number:x}) is revoked by its maker's CRL "
                                 f"({self.file.path})", "unauthorized")


__all__ = ["EkCrls", "EkDenyList", "ROCA_PRIMES", "check_not_roca", "roca_fingerprint"]
