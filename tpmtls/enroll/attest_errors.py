"""Errors of attested enrollment: a client-side failure, and a server's refusal with its ACME type."""

from __future__ import annotations

from ..errors import EnrollmentError

ACME_ERROR_PREFIX = "urn:ietf:params:acme:error:"

#: Enrollment cannot go on: a server refused, or a file, TPM or answer is unusable. The
#: one enrollment error of tpmtls (pairing raises it too), exported as tpmtls.EnrollmentError.
EnrollError = EnrollmentError


class Refusal(EnrollError):
    """A verifier refuses an input; `kind` is the ACME error type (RFC 8555 6.7, device-attest-01)."""

    def __init__(self, kind: str, detail: str, status: int = 400, *, extra: dict[str, object] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.status = status
        self.extra = extra or {}  # more problem fields, e.g. `algorithms` with badSignatureAlgorithm (RFC 8555 6.2)
        self.headers = headers or {}  # e.g. Retry-After with rateLimited, Allow with 405

    def problem(self) -> dict[str, object]:
        """The RFC 7807 problem document an ACME server answers with."""
        return {"type": ACME_ERROR_PREFIX + self.kind, "detail": self.detail, "status": self.status, **self.extra}


__all__ = ["ACME_ERROR_PREFIX", "EnrollError", "Refusal"]
