"""`tpmtls doctor`'s checks: what a user should know before the first push, each a finding.

A finding is one line: its status, what was checked, and — when something is wrong — what
to do. The checks are grouped by what they look at, one module each: the libraries and
the TPM (`tpm`), the certificates in both certs.d roots (`certs`), Docker's credential
helper (`credentials`), the clock (`clock`). `tpmtls doctor` prints them or their JSON
(docs/scripting.md, "tpmtls doctor"); it fails when any finding failed.
"""

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


def run(tcti: str | None = None) -> Report:
    """Every check, against the TPM `tcti` names (or the default one)."""
    from . import certs, clock, credentials, tpm

    findings: list[Finding] = []
    versions = tpm.versions()
    findings += tpm.check_provider()
    tpm_findings, pool = tpm.check_tpm(tcti)
    findings += tpm_findings
    seen = certs.check_all()
    findings += seen.findings
    findings += credentials.check()
    findings += clock.check(seen.not_before)
    return Report(versions, findings, pool)


__all__ = ["FAILED", "INFO", "OK", "WARNING", "Finding", "Report", "run"]
