"""`tpmtls doctor`'s checks: what a user should know before the first push, each a finding.

A finding is one line: its status, what was checked, and — when something is wrong — what
to do. The checks are grouped by what they look at, one module each: the libraries and
the TPM (`tpm`), the certificates in both certs.d roots (`certs`), Docker's credential
helper (`credentials`), the clock (`clock`). `tpmtls doctor` prints them or their JSON
(docs/scripting.md, "tpmtls doctor"); it fails when any finding failed.
"""

from __future__ import annotations

from . import certs, clock, credentials, tpm
from .findings import FAILED, INFO, OK, WARNING, Finding, Report


def run(tcti: str | None = None) -> Report:
    """Every check, against the TPM `tcti` names (or the default one)."""
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
