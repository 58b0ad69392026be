"""What the enrollment server remembers, and the one small interface every backend implements.

Records are plain dataclasses; `EnrollStore` is the contract (SQLite and PostgreSQL in
`state_sql`). Every change a concurrent request could race is a compare-and-set
(`update_order(..., expect=...)`, `take_nonce`, `take_session`), so two server processes on
one database never both spend a nonce, answer a challenge twice or finalize an order twice.
Certificates are kept by serial with the EK they were attested with: revocation by serial
and refusing renewal of a revoked key are lookups here.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Account:
    """An ACME account (RFC 8555 7.1.2): its key, status and when it was last used (idle ones expire)."""

    id: str
    thumbprint: str
    jwk: str  # JSON of the public JWK
    status: str = "valid"
    contact: list[str] = field(default_factory=list)
    created: float = 0.0
    last_used: float = 0.0
    client: str = ""  # the address it was created from


@dataclass
class Order:
    """An order for one identifier with its one authorization and device-attest-01 challenge."""

    id: str
    account: str
    identifier: str
    expires: float
    authz_id: str
    token: str
    status: str = "pending"
    authz_status: str = "pending"
    error: dict[str, Any] | None = None
    attested_spki: bytes | None = None  # DER SubjectPublicKeyInfo the challenge proved
    ek: str = ""  # the EK identifier(s) of the AK certificate that attested it
    cert_serial: str | None = None
    created: float = 0.0


@dataclass
class AttestSession:
    """A credential the Attestation CA sealed to an EK, waiting for its activated secret (`/secret`)."""

    secret_hash: bytes
    ek: str  # urn:ek:sha256:…, at most one pending session per EK
    ak_public: bytes  # TPMT_PUBLIC
    details: dict[str, str]
    nonce: bytes
    expires: float


@dataclass
class CertRecord:
    """An issued client certificate: serial (hex), the attested key and EK, and its revocation if any."""

    serial: str
    order_id: str
    account: str
    identifier: str
    ek: str
    spki_sha256: str
    not_before: float
    not_after: float
    pem: bytes  # the chain as served: certificate, then the issuing CA
    issued_at: float = 0.0
    revoked_at: float | None = None
    reason: str | None = None


class EnrollStore(abc.ABC):
    """Persistent state of `tpmtls enroll-server`; thread-safe; shared by every process on one database."""

    url: str

    # nonces (RFC 8555 6.5) -------------------------------------------------------------
    @abc.abstractmethod
    def add_nonce(self, value: str, expires: float, cap: int) -> None:
        """Remember a fresh nonce; past `cap` outstanding ones the oldest are forgotten (their users retry)."""

    @abc.abstractmethod
    def take_nonce(self, value: str) -> float | None:
        """Spend a nonce: its expiry time, or None if unknown or already spent."""

    # attestation sessions ---------------------------------------------------------------
    @abc.abstractmethod
    def put_session(self, session: AttestSession) -> None:
        """Record a pending attestation, replacing any earlier one for the same EK."""

    @abc.abstractmethod
    def take_session(self, secret_hash: bytes) -> AttestSession | None:
        """Spend the session whose secret hashes to `secret_hash` (single use)."""

    # accounts ---------------------------------------------------------------------------
    @abc.abstractmethod
    def add_account(self, account: Account) -> tuple[Account, bool]:
        """Insert unless the key (thumbprint) has an account: (the account, created?)."""

    @abc.abstractmethod
    def account(self, account_id: str) -> Account | None: ...

    @abc.abstractmethod
    def account_by_thumbprint(self, thumbprint: str) -> Account | None: ...

    @abc.abstractmethod
    def update_account(self, account_id: str, **changes: Any) -> None:
        """Set `status`, `contact` or `last_used`."""

    # orders -----------------------------------------------------------------------------
    @abc.abstractmethod
    def add_order(self, order: Order) -> None: ...

    @abc.abstractmethod
    def order(self, order_id: str) -> Order | None: ...

    @abc.abstractmethod
    def order_by_authz(self, authz_id: str) -> Order | None: ...

    @abc.abstractmethod
    def orders_of(self, account_id: str, limit: int) -> list[str]:
        """Ids of the account's orders, newest first."""

    @abc.abstractmethod
    def open_orders(self, account_id: str, now: float) -> int:
        """How many of the account's orders are unexpired and not yet valid or invalid."""

    @abc.abstractmethod
    def update_order(self, order_id: str, expect: dict[str, Any], **changes: Any) -> bool:
        """Apply `changes` only if every `expect` column still holds its value: True if it did."""

    # certificates -----------------------------------------------------------------------
    @abc.abstractmethod
    def add_certificate(self, record: CertRecord) -> None: ...

    @abc.abstractmethod
    def certificate(self, serial: str) -> CertRecord | None: ...

    @abc.abstractmethod
    def revoked_for_key(self, spki_sha256: str) -> CertRecord | None:
        """A revoked certificate of this key, if any: renewing such a key is refused."""

    @abc.abstractmethod
    def revoke(self, serial: str, reason: str, when: float) -> bool:
        """Mark a certificate revoked; False if there is no such serial."""

    # housekeeping -----------------------------------------------------------------------
    @abc.abstractmethod
    def purge(self, now: float, account_idle: float, keep_orders: float) -> dict[str, int]:
        """Forget what is spent: expired nonces and sessions, orders expired `keep_orders` ago, idle accounts."""

    @abc.abstractmethod
    def counts(self) -> dict[str, int]:
        """Rows per table (for tests, `doctor`-like output and the benchmark)."""

    @abc.abstractmethod
    def close(self) -> None: ...


__all__ = ["Account", "AttestSession", "CertRecord", "EnrollStore", "Order"]
