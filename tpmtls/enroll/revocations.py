"""The enrollment server's side of revocation: `tpmtls ca revoke` reaches the database, and a
revoked key gets no new certificate.

The file CA's record (`DIR/revoked.json`, pki/revocation.py) is where revocations are made;
whenever it changes, its entries are marked in the server's store (`EnrollStore.revoke`), so
every instance on one database refuses alike. A key is checked when its challenge is answered
and again at finalize: a renewal re-attests the same key, so a revoked certificate's key is
refused, whatever AK or account the client brings. A machine as a whole is refused by its EK
(`--ek-deny`, `--ek-crls`: ek_hygiene.py).
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from ..pki.revocation import RevocationList
from .attest_errors import Refusal
from .state import EnrollStore


class CaRevocations:
    """Follows DIR/revoked.json into the store; `check_key` refuses a key with a revoked certificate."""

    def __init__(self, ca_dir: str | Path, store: EnrollStore) -> None:
        self.record = RevocationList(ca_dir)
        self.store = store
        self._stamp: tuple[int, int] | None = None
        self._lock = threading.Lock()

    def sync(self) -> int:
        """Mark in the store what the CA's record revokes, if the record changed: how many entries it holds."""
        with self._lock:
            stamp = self.record.stamp()
            if stamp is None or stamp == self._stamp:
                return 0
            entries = self.record.load().entries.values()
            for entry in entries:
                self.store.revoke(entry.serial, entry.reason, entry.when.timestamp())
            self._stamp = stamp
            return len(entries)

    def check_key(self, spki: bytes) -> str:
        """SHA-256 hex of the key (its CertRecord key); a Refusal if one of its certificates was revoked."""
        self.sync()
        key_hash = hashlib.sha256(spki).hexdigest()
        revoked = self.store.revoked_for_key(key_hash)
        if revoked is not None:
            raise Refusal("unauthorized", f"this key's certificate {revoked.serial} was revoked "
                                          f"({revoked.reason or 'unspecified'}): enroll a new key")
        return key_hash


__all__ = ["CaRevocations"]
