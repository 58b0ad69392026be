"""What an enroll-server operator decides (certificate lifetime, expiries, per-client limits) and its counters."""

from __future__ import annotations

from dataclasses import dataclass, field

from .ratelimit import Rate

NONCE_TTL = 300.0


@dataclass
class Settings:
    """What the operator decides, not the client: certificate lifetime, expiries and per-client limits."""

    cert_hours: float = 24.0  # attested client certificates are short-lived; renewal re-attests
    nonce_ttl: float = NONCE_TTL
    nonce_cap: int = 100_000  # outstanding nonces; past it the oldest are forgotten (their clients retry)
    order_ttl: float = 3600.0
    open_orders_per_account: int = 10
    account_idle: float = 7 * 86400.0  # an account unused this long (and without orders) is forgotten
    keep_orders: float = 86400.0  # orders stay this long past their expiry (their certificates stay for good)
    new_accounts: Rate = field(default_factory=lambda: Rate(1.0, 30))  # per client address
    attestations: Rate = field(default_factory=lambda: Rate(1.0, 30))  # /attest per client address


@dataclass
class Stats:
    """Counters of this process, for tests, logs and the benchmark."""

    issued: int = 0
    refused: int = 0
    requests: int = 0
    seconds: float = 0.0  # time spent handling requests (server CPU + verification + database)
    reasons: list[str] = field(default_factory=list)


__all__ = ["NONCE_TTL", "Settings", "Stats"]
