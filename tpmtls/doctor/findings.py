"""What doctor reports: findings, one line each, and the report that holds them."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

OK, INFO, WARNING, FAILED = "ok", "info", "warning", "failed"


@dataclass(frozen=True)
class Finding:
    """One line of the report: `status` is ok, info, warning or failed; `subject` what it is about
    (a TCTI, a device, a certs.d directory, a file), `message` what was found and what to do."""

    check: str
    status: str
    subject: str
    message: str

    def line(self) -> str:
        label = self.status.upper() if self.status == FAILED else self.status
        return f"{label:<8} {self.check}: {self.message}"

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class Report:
    """Everything doctor found, in the order it looked."""

    versions: dict[str, str]
    findings: list[Finding]
    pool: dict[str, int]

    @property
    def failed(self) -> list[Finding]:
        return [f for f in self.findings if f.status == FAILED]

    def as_dict(self) -> dict[str, Any]:
        return {"ok": not self.failed, "versions": self.versions,
                "findings": [f.as_dict() for f in self.findings], "pool": self.pool}


__all__ = ["FAILED", "INFO", "OK", "WARNING", "Finding", "Report"]
