"""The file CA's revocations (`tpmtls ca revoke`) and the CRL made from them (`tpmtls ca crl`).

DIR/revoked.json is the record: one entry per revoked serial, with its reason and date;
DIR/crlnumber holds the number of the last CRL signed, in hex, as `openssl ca` keeps it
(RFC 5280 5.2.3: CRL numbers only grow). Changes are serialised by an flock on
DIR/.revoked.lock and written atomically, so `ca revoke`, a CRL daemon and the enrollment
server (which reads the record to refuse renewals) never see half a file.
docs/formats.md, "Revocations", describes the file; docs/revocation.md the whole.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from cryptography import x509

from .._files import write_atomic
from ..errors import UsageError

FILE = "revoked.json"
CRL_NUMBER = "crlnumber"
_LOCK = ".revoked.lock"
_FORMAT = "tpmtls revocations"

#: RFC 5280 5.3.1 reason codes by their ASN.1 names; `certificateHold` is left out (a hold can be lifted,
#: and nothing here lifts one) and `removeFromCRL` belongs to delta CRLs.
REASONS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "cACompromise": x509.ReasonFlags.ca_compromise,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
    "privilegeWithdrawn": x509.ReasonFlags.privilege_withdrawn,
}


def reason_name(text: str) -> str:
    """RFC 5280's spelling of a reason given as `keyCompromise`, `key-compromise` or `KEY_COMPROMISE`."""
    wanted = text.replace("-", "").replace("_", "").lower()
    for name in REASONS:
        if name.lower() == wanted:
            return name
    raise UsageError(f"--reason {text!r}: not a revocation reason; one of {', '.join(REASONS)}")


def parse_serial(text: str) -> str:
    """A serial as hex, the way `openssl x509 -serial` prints it (colons and a 0x prefix allowed); the
    canonical form is lowercase hex without leading zeros, as DIR/issued/<serial>.pem names it."""
    s = text.strip().lower().removeprefix("serial=").removeprefix("0x").replace(":", "")
    try:
        value = int(s, 16)
    except ValueError:
        raise UsageError(f"--serial {text!r}: not a hexadecimal serial number (as 'openssl x509 -noout -serial' "
                         "prints it)") from None
    if value <= 0:
        raise UsageError(f"--serial {text!r}: serial numbers are positive")
    return f"{value:x}"


def _rfc3339(t: datetime.datetime) -> str:
    return t.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: str, where: str) -> datetime.datetime:
    try:
        return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    except (TypeError, ValueError):
        raise UsageError(f"{where}: {text!r} is not a time like 2026-12-01T10:00:00Z") from None


@dataclass(frozen=True)
class Revoked:
    """One revoked certificate: serial (hex), reason (RFC 5280 name), when, and what it was, if known."""

    serial: str
    reason: str
    revoked_at: str  # RFC 3339, UTC
    subject: str = ""
    not_after: str = ""  # RFC 3339, when the certificate was at hand

    @property
    def when(self) -> datetime.datetime:
        return _parse_time(self.revoked_at, f"revocation of {self.serial}")


@dataclass
class Revocations:
    """What DIR/revoked.json holds."""

    entries: dict[str, Revoked]

    def find(self, serial: str) -> Revoked | None:
        return self.entries.get(serial)


class RevocationList:
    """DIR/revoked.json of one file CA: read freely, changed under a lock."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.path = self.directory / FILE

    def stamp(self) -> tuple[int, int] | None:
        """(mtime_ns, size) of the file, None if there is none: a reader reloads when it changes."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise UsageError(f"{self.path}: cannot read: {e.strerror}") from None
        return st.st_mtime_ns, st.st_size

    def load(self) -> Revocations:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return Revocations({})
        except OSError as e:
            raise UsageError(f"{self.path}: cannot read the revocations: {e.strerror}") from None
        try:
            doc = json.loads(raw)
            if doc.get("format") != _FORMAT or doc.get("version") != 1:
                raise ValueError("not a tpmtls revocations file of version 1")
            entries = {}
            for item in doc["revoked"]:
                entry = Revoked(**{k: str(v) for k, v in item.items() if k in Revoked.__dataclass_fields__})
                entries[parse_serial(entry.serial)] = entry
            return Revocations(entries)
        except (ValueError, KeyError, TypeError, AttributeError, UsageError) as e:
            raise UsageError(f"{self.path}: damaged revocations file ({e}); restore it from a backup") from None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            fd = os.open(self.directory / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise UsageError(f"{self.directory}: cannot lock the revocations: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held for a read and a rename: never long
            yield
        finally:
            os.close(fd)

    def _save(self, state: Revocations) -> None:
        doc: dict[str, Any] = {"format": _FORMAT, "version": 1,
                               "revoked": [asdict(e) for e in sorted(state.entries.values(), key=lambda e: e.revoked_at)]}
        write_atomic(self.path, (json.dumps(doc, indent=1) + "\n").encode(), 0o644)

    def add(self, serial: str, reason: str, *, subject: str = "", not_after: datetime.datetime | None = None,
            when: datetime.datetime | None = None) -> tuple[Revoked, bool]:
        """Revoke `serial` (canonical hex); (the entry, True) if new, (the earlier entry, False) if it was already."""
        with self._locked():
            state = self.load()
            earlier = state.find(serial)
            if earlier is not None:
                return earlier, False
            now = when or datetime.datetime.now(datetime.timezone.utc)
            entry = Revoked(serial, reason, _rfc3339(now), subject, _rfc3339(not_after) if not_after else "")
            state.entries[serial] = entry
            self._save(state)
            return entry, True

    def next_crl_number(self) -> tuple[Revocations, int]:
        """The revocations and the number of the CRL about to be signed (recorded first, so numbers only grow)."""
        path = self.directory / CRL_NUMBER
        with self._locked():
            try:
                last = int(path.read_text().strip() or "0", 16)
            except FileNotFoundError:
                last = 0
            except (OSError, ValueError) as e:
                raise UsageError(f"{path}: not a CRL number in hex ({e}); restore it, or write a number above the "
                                 "last CRL's") from None
            write_atomic(path, f"{last + 1:02X}\n".encode(), 0o644)
            return self.load(), last + 1


__all__ = ["CRL_NUMBER", "FILE", "REASONS", "RevocationList", "Revocations", "Revoked", "parse_serial", "reason_name"]
