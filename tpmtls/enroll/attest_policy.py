"""PCR policy: which PCR values a machine may quote to get an AK certificate.

The file records a reference machine's values (`tpmtls enroll policy`); the Attestation
CA demands a quote by the AK over a fresh nonce whose PCRs each hold an allowed value.
Format: {"version": 1, "pcrs": {"sha256": {"0": ["<hex>", …], …}}}.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from tpm2_pytss.constants import TPM2_ST
from tpm2_pytss.types import TPMT_SIGNATURE

from ..errors import UsageError
from .attest_errors import EnrollError
from .attest_verify import HASHLIB_NAMES, parse_attest, refuse, unmarshal, verify_tpm_signature

BANK_SIZES = {"sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64}
_TPM_BANK = {"sha1": 0x0004, "sha256": 0x000B, "sha384": 0x000C, "sha512": 0x000D}
_MAX_PCR = 23


def parse_selection(text: str) -> dict[str, list[int]]:
    """'sha256:0,1,2+sha1:7' (tpm2-tools' spelling) → {'sha256': [0, 1, 2], 'sha1': [7]}."""
    out: dict[str, list[int]] = {}
    for part in filter(None, text.replace(" ", "").split("+")):
        bank, sep, pcrs = part.partition(":")
        if not sep or bank not in BANK_SIZES or not pcrs:
            raise UsageError(f"PCR selection {part!r}: write it as BANK:N,N,… with BANK one of {', '.join(BANK_SIZES)}")
        try:
            nums = sorted({int(p) for p in pcrs.split(",")})
        except ValueError:
            raise UsageError(f"PCR selection {part!r}: PCR numbers must be integers") from None
        if any(not 0 <= n <= _MAX_PCR for n in nums):
            raise UsageError(f"PCR selection {part!r}: PCRs are numbered 0 to {_MAX_PCR}")
        out[bank] = nums
    if not out:
        raise UsageError(f"PCR selection {text!r} is empty; e.g. sha256:0,1,2,3,4,5,6,7")
    return out


@dataclass(frozen=True)
class PcrPolicy:
    """Allowed digests per bank and PCR; the selection is every PCR named."""

    allowed: dict[str, dict[int, frozenset[bytes]]]

    @property
    def selection(self) -> dict[str, list[int]]:
        return {bank: sorted(pcrs) for bank, pcrs in self.allowed.items()}

    @classmethod
    def from_values(cls, values: dict[str, dict[int, bytes]]) -> "PcrPolicy":
        return cls({bank: {pcr: frozenset([v]) for pcr, v in pcrs.items()} for bank, pcrs in values.items()})

    def to_json(self) -> bytes:
        doc = {"version": 1, "pcrs": {bank: {str(pcr): sorted(v.hex() for v in vals) for pcr, vals in sorted(pcrs.items())}
                                      for bank, pcrs in self.allowed.items()}}
        return (json.dumps(doc, indent=2) + "\n").encode()

    @classmethod
    def load(cls, path: str | Path) -> "PcrPolicy":
        from .._files import read_input

        p = Path(path)
        try:
            doc = json.loads(read_input(p, "policy", error=EnrollError))
        except (ValueError, RecursionError):
            raise EnrollError(f"{p}: not JSON; make one with 'tpmtls enroll policy'") from None
        try:
            if doc.get("version") != 1:
                raise ValueError("version must be 1")
            allowed: dict[str, dict[int, frozenset[bytes]]] = {}
            for bank, pcrs in doc["pcrs"].items():
                if bank not in BANK_SIZES:
                    raise ValueError(f"unknown bank {bank!r}")
                for pcr, vals in pcrs.items():
                    n = int(pcr)
                    if not 0 <= n <= _MAX_PCR or not vals:
                        raise ValueError(f"PCR {pcr} has no allowed values or is out of range")
                    digests = frozenset(bytes.fromhex(v) for v in vals)
                    if any(len(d) != BANK_SIZES[bank] for d in digests):
                        raise ValueError(f"{bank} PCR {pcr}: a value is not {BANK_SIZES[bank]} bytes")
                    allowed.setdefault(bank, {})[n] = digests
            if not allowed:
                raise ValueError("no PCRs")
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise EnrollError(f"{p}: not a PCR policy ({e}); make one with 'tpmtls enroll policy'") from None
        return cls(allowed)

    def check_quote(self, ak_key: Any, quoted: bytes, signature: bytes, reported: object, nonce: bytes) -> None:
        """The AK signed a quote over `nonce` of exactly our PCR selection, and every value is allowed."""
        if not isinstance(ak_key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey)):
            raise refuse("the AK has no usable public key")
        attest = parse_attest(quoted, TPM2_ST.ATTEST_QUOTE, "quote.quoted")
        if not hmac.compare_digest(bytes(attest.extraData), nonce):
            raise refuse("the quote is not over this session's nonce (replayed or stale)")
        verify_tpm_signature(ak_key, signature, quoted, "quote")
        values = self._reported(reported)
        got = {}
        for sel in attest.attested.quote.pcrSelect:
            bank = next((b for b, v in _TPM_BANK.items() if v == int(sel.hash)), None)
            bits = bytes(sel.pcrSelect)[: int(sel.sizeofSelect)]
            pcrs = [i for i in range(len(bits) * 8) if bits[i // 8] >> (i % 8) & 1]
            if bank is None:
                raise refuse(f"the quote selects an unknown PCR bank 0x{int(sel.hash):x}")
            got[bank] = pcrs
        if got != self.selection:
            raise refuse(f"the quote covers PCRs {got}, the policy wants {self.selection}")
        sig = unmarshal(TPMT_SIGNATURE, signature, "quote signature")
        hash_name = HASHLIB_NAMES.get(int(sig.signature.any.hashAlg), "sha256")
        h = hashlib.new(hash_name)
        for bank, pcrs in self.selection.items():
            for pcr in pcrs:
                h.update(values[bank][pcr])
        if not hmac.compare_digest(h.digest(), bytes(attest.attested.quote.pcrDigest)):
            raise refuse("the reported PCR values do not match the quote's digest")
        for bank, allowed in self.allowed.items():
            for pcr, ok in allowed.items():
                if values[bank][pcr] not in ok:
                    raise refuse(f"PCR {bank}:{pcr} = {values[bank][pcr].hex()} is not allowed by the policy")

    def _reported(self, reported: object) -> dict[str, dict[int, bytes]]:
        out: dict[str, dict[int, bytes]] = {}
        try:
            for bank, pcrs in self.selection.items():
                given = reported[bank]  # type: ignore[index]
                for pcr in pcrs:
                    value = bytes.fromhex(given[str(pcr)])
                    if len(value) != BANK_SIZES[bank]:
                        raise ValueError
                    out.setdefault(bank, {})[pcr] = value
        except (KeyError, TypeError, ValueError):
            raise refuse("quote.pcrs does not report every policy PCR as hex") from None
        return out


__all__ = ["PcrPolicy", "parse_selection"]
