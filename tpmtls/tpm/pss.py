"""The RSA-PSS salt quirk of a TPM: does its own PSS use a salt of the digest length?

TLS 1.3 needs PSS with salt = digest length (RFC 8446, 4.2.3). swtpm's TPM2_Sign does
that; some hardware TPMs use the maximum salt (tpm2-openssl issues #75/#114/#115). So
the first native PSS signature is checked, and a TPM that salts otherwise is signed
for with raw RSA (TPM2_RSA_Decrypt, scheme NULL) over software PSS padding from then
on. $TPMTLS_FORCE_RAW_PSS (or `forcing_raw()`) takes the raw route always, so tests can
exercise it on swtpm. One per pool: the answer belongs to the TPM behind it.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Iterator


class PssQuirk:
    """What this TPM's PSS salt is known to be, and so which signing route to take."""

    def __init__(self, force_raw: bool | None = None) -> None:
        if force_raw is None:
            force_raw = os.environ.get("TPMTLS_FORCE_RAW_PSS", "") not in ("", "0")
        self._force_raw = force_raw
        self._digest_salt: bool | None = None  # unknown until the first native PSS signature
        self._lock = threading.Lock()

    @property
    def digest_salt(self) -> bool | None:
        """True/False once a native PSS signature showed the TPM's salt; None before."""
        return self._digest_salt

    def native_fits(self, hash_name: str, mgf_hash_name: str, salt_len: int, digest_size: int) -> bool:
        """True when the TPM's own PSS can make this signature (else use raw RSA)."""
        return (
            not self._force_raw
            and self._digest_salt is not False
            and mgf_hash_name == hash_name
            and salt_len == digest_size
        )

    def needs_check(self) -> bool:
        """True while no native PSS signature has been verified on this TPM yet."""
        return self._digest_salt is None

    def learn(self, digest_salt: bool) -> None:
        """Record what a native PSS signature showed: salt of the digest length or not."""
        with self._lock:
            if self._digest_salt is None or not digest_salt:
                self._digest_salt = digest_salt

    @contextmanager
    def forcing_raw(self) -> Iterator[None]:
        """Take the raw-RSA route for the duration (tests: the fallback on a TPM that needs none)."""
        old, self._force_raw = self._force_raw, True
        try:
            yield
        finally:
            self._force_raw = old
