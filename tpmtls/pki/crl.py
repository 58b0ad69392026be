"""CRLs of the file CA (`tpmtls ca crl DIR --out CRL [--daemon]`), for fronts that check them (NGINX `ssl_crl`).

A CRL says until when it is good (nextUpdate); a front holding one past that refuses every
client ("CRL has expired"), so it must be re-signed well before: by a timer
(helpers/tpmtls-ca-crl@.timer) or by `--daemon`, which re-signs at half its lifetime and
within seconds of a revocation. docs/revocation.md has the reload recipe.
"""

from __future__ import annotations

import datetime
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from .._files import write_atomic
from .revocation import REASONS, RevocationList

if TYPE_CHECKING:
    from .ca import FileCA

#: thisUpdate a little in the past, so a front whose clock is slightly behind ours takes the CRL at once
_SKEW = datetime.timedelta(minutes=1)


def build_crl(ca: "FileCA", lifetime: datetime.timedelta,
              now: datetime.datetime | None = None) -> x509.CertificateRevocationList:
    """Every revocation recorded in the CA directory, signed by the CA, good for `lifetime` (RFC 5280 5)."""
    state, number = RevocationList(ca.directory).next_crl_number()
    now = now or datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateRevocationListBuilder().issuer_name(ca.cert.subject)
        .last_update(now - _SKEW).next_update(now + lifetime)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )
    for entry in state.entries.values():
        revoked = x509.RevokedCertificateBuilder().serial_number(int(entry.serial, 16)).revocation_date(entry.when)
        if entry.reason != "unspecified":  # RFC 5280 5.3.1: the reason code unspecified is better left out
            revoked = revoked.add_extension(x509.CRLReason(REASONS[entry.reason]), critical=False)
        builder = builder.add_revoked_certificate(revoked.build())
    return builder.sign(ca.key, hashes.SHA256())


def write_crl(ca: "FileCA", out: str | os.PathLike[str], lifetime: datetime.timedelta) -> x509.CertificateRevocationList:
    """Sign a CRL and put it at `out` (PEM, 0644) atomically: a front reloading meanwhile reads the old or the new."""
    crl = build_crl(ca, lifetime)
    write_atomic(out, crl.public_bytes(serialization.Encoding.PEM), 0o644)
    return crl


class CrlKeeper:
    """`ca crl --daemon`: keep `out` fresh — re-signed at half its lifetime, and soon after every revocation."""

    def __init__(self, ca: "FileCA", out: str | os.PathLike[str], lifetime: datetime.timedelta, *,
                 poll: float = 5.0, log: Callable[[str], None] = print) -> None:
        self.ca, self.out, self.lifetime = ca, Path(out), lifetime
        self.poll = poll
        self.log = log
        self._stop = threading.Event()
        self.written = 0

    def stop(self) -> None:
        self._stop.set()

    def serve(self) -> None:
        """Until `stop()`: write, then wait for a revocation or half the lifetime, and again."""
        revocations = RevocationList(self.ca.directory)
        half = self.lifetime.total_seconds() / 2
        while not self._stop.is_set():
            stamp = revocations.stamp()
            crl = write_crl(self.ca, self.out, self.lifetime)
            self.written += 1
            crl_number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
            self.log(f"wrote CRL {crl_number} ({len(crl)} revoked) to {self.out}, next update "
                     f"{crl.next_update_utc:%Y-%m-%d %H:%M:%S} UTC")
            waited = 0.0
            while not self._stop.is_set() and waited < half and revocations.stamp() == stamp:
                step = min(self.poll, half - waited)
                self._stop.wait(step)
                waited += step


__all__ = ["CrlKeeper", "build_crl", "write_crl"]
