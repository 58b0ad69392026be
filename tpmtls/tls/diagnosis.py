"""Why a TLS connection failed, decided in one place.

An exception (stdlib `ssl`, pyOpenSSL, urllib3 and requests wrappers, sockets, tpmtls's TPM
errors), a peer's text (Go's `tls:`/`x509:` errors in docker CLI output) or an HTTP answer
(NGINX judges client certificates after the handshake and answers 400) becomes a
`Diagnosis`: one `Cause` from a small set, plus the peer's or library's own words. Callers
(the registry transport, the daemon client and proxy, `tpmtls connect`, pairing,
enrollment) keep only their wording.

The texts recognised are the ones real peers produce, checked in tests/tls/test_diagnosis.py
against `openssl s_server -Verify`, docker-registry (Go), NGINX, the docker CLI, plain HTTP
servers, silent listeners and closed ports; docs/tls-failures.md lists them.
"""

from __future__ import annotations

import datetime
import enum
import errno
import os
import re
import ssl
from dataclasses import dataclass

from ..errors import TpmBusy, TpmError, TpmtlsError, TpmUnavailable
from ._errors import TpmHandshakeError


class Cause(enum.Enum):
    """What went wrong, in the terms a user can act on."""

    NOT_TLS = "not TLS"  # the peer answered our ClientHello in plain HTTP (or another protocol)
    UNTRUSTED = "peer untrusted"  # its certificate does not chain to the CAs we trust
    NAME_MISMATCH = "name mismatch"  # its certificate is valid, but not for the name we asked for
    REFUSED = "our certificate refused"  # the peer refused our client certificate, or wanted one we did not send
    EXPIRED = "expired or not yet valid"  # a certificate outside its dates: `Diagnosis.ours` says whose
    CLOSED = "closed after handshake"  # the peer hung up without a reason (TLS 1.3 refusals can look so)
    UNREACHABLE = "unreachable"  # nothing listens there, no route, no such name
    TIMEOUT = "timeout"  # connected (or tried to) and heard nothing in time
    TPM = "TPM failed"  # our TPM could not sign (its reason is in `reason`)
    TLS_FAILED = "TLS failed"  # a TLS error none of the above explains (`reason` has OpenSSL's words)
    OTHER = "other"  # not a TLS or connection failure this module knows


@dataclass(frozen=True)
class Diagnosis:
    """A cause with the words that decided it (`reason`: short, one line, for a message)."""

    cause: Cause
    reason: str
    ours: bool = False  # EXPIRED: our certificate (the peer said so, or its file's dates) rather than theirs
    not_yet_valid: bool = False  # EXPIRED: before its start date, not past its end
    names: str = ""  # NAME_MISMATCH: the names the certificate holds, when the error lists them
    alert: str = ""  # the peer's TLS alert, by its RFC 8446 name in words ("unknown ca", "certificate required")
    dates: str = ""  # EXPIRED and ours: "<file> expired on …" / "<file> is not valid before …"

    @property
    def refused(self) -> bool:
        """The peer refused our certificate (for any reason, its dates included)."""
        return self.cause is Cause.REFUSED or (self.cause is Cause.EXPIRED and self.ours)


# --- the words of real peers (lower case, "_" read as " ") ------------------------------------

#: Our ClientHello reached something that is not TLS: OpenSSL's reasons, then Go's.
_NOT_TLS = ("wrong version number", "record layer failure", "packet length too long", "unknown protocol",
            "http request", "first record does not look like a tls handshake",
            "server gave http response to https client")
#: A peer's alert: OpenSSL 3 writes "tlsv1 alert unknown ca" (SSLV3_ALERT_… / TLSV13_ALERT_…), OpenSSL 4
#: (cryptography's) "tls alert handshake failure", Go "remote error: tls: bad certificate".
_ALERT = re.compile(r"\b(?:sslv3|tlsv1|tlsv13|tls) alert ([a-z ]+)|remote error: tls: ([a-z ]+)")
#: Alerts by which a server refuses a client certificate (RFC 8446 6.2; s_server -Verify, Go, NGINX).
_REFUSING_ALERTS = ("certificate", "unknown ca", "handshake failure")
#: Go names some alerts its own way (crypto/tls alert.go); the RFC's names are ours.
_GO_ALERTS = {"unknown certificate authority": "unknown ca", "expired certificate": "certificate expired",
              "revoked certificate": "certificate revoked", "unknown certificate": "certificate unknown"}
#: NGINX (and others) judging the client certificate after the handshake, in an HTTP 400/495/496 body.
_HTTP_REFUSALS = ("no required ssl certificate was sent", "the ssl certificate error", "ssl certificate error",
                  "ssl certificate verify error", "certificate required")
_NAME_MISMATCH = ("hostname mismatch", "ip address mismatch", "doesn't match", "certificate does not match", "is valid for",
                  "is not valid for", "cannot validate certificate for")
_THEIRS_EXPIRED = ("certificate has expired", "certificate is not yet valid", "has expired or is not yet valid")
_UNTRUSTED = ("certificate verify failed", "failed to verify certificate", "signed by unknown authority", "x509: ")
_CLOSED = ("eof occurred in violation of protocol", "unexpected eof", "connection reset", "remote end closed",
           "broken pipe", "connection has been closed")
_TIMEOUT = ("timed out", "i/o timeout", "deadline exceeded", "handshake timeout")
_UNREACHABLE = ("connection refused", "no route to host", "network is unreachable", "name or service not known",
                "temporary failure in name resolution", "no such host", "cannot connect to the docker daemon",
                "failed to establish a new connection")
#: OpenSSL's verification results (X509_V_ERR_*) that the stdlib reports in `verify_code`.
_V_NOT_YET_VALID, _V_EXPIRED, _V_HOSTNAME_MISMATCH, _V_IP_MISMATCH = 9, 10, 62, 64
_UNREACHABLE_ERRNOS = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENOENT, errno.EADDRNOTAVAIL}


def diagnose(error: BaseException, *, ours: str | os.PathLike[str] | None = None) -> Diagnosis:
    """The cause of a failed TLS exchange. `ours`: our certificate file, whose dates tell an
    expired client certificate from another refusal (a server's alert often does not)."""
    chain = causes(error)
    for e in chain:
        if isinstance(e, (TpmHandshakeError, TpmError, TpmUnavailable, TpmBusy)):
            return Diagnosis(Cause.TPM, _one_line(str(e), limit=1000))  # the TPM's reason names its TCTI: keep it whole
    for e in chain:
        verified = _verification(e)
        if verified is not None:
            return verified
    for e in chain:
        found = _from_words(_words(e), _short(e), ours)
        if found is not None and found.cause not in (Cause.CLOSED, Cause.TIMEOUT, Cause.UNREACHABLE):
            return found
    for e in reversed(chain):  # the innermost error is the most precise (urllib3 wraps a refusal in a "timeout")
        found = _from_type(e)
        if found is not None:
            return found
    for e in chain:
        found = _from_words(_words(e), _short(e), ours)
        if found is not None:
            return found
    innermost = chain[-1]
    if any(_is_tls_error(e) for e in chain):
        return Diagnosis(Cause.TLS_FAILED, _short(innermost))
    return Diagnosis(Cause.OTHER, _short(innermost))


def diagnose_text(text: str, *, ours: str | os.PathLike[str] | None = None) -> Diagnosis:
    """The cause in a peer's or another program's words (docker CLI's Go errors, a log line)."""
    reason = _go_reason(text)
    return _from_words(_normal(text), reason, ours) or Diagnosis(Cause.OTHER, reason)


def diagnose_response(status: int, body: bytes, *, ours: str | os.PathLike[str] | None = None) -> Diagnosis | None:
    """An HTTP answer that is a TLS terminator refusing our certificate after the handshake
    (NGINX: 400 "No required SSL certificate was sent" / "The SSL certificate error"), or None."""
    if status not in (400, 495, 496):
        return None
    text = body[:2000].decode(errors="replace").lower()
    words = next((w for w in _HTTP_REFUSALS if w in text), None)
    if words is None:
        return None
    return _refused(f"HTTP {status}: {words}", ours)


def causes(error: BaseException, limit: int = 20) -> list[BaseException]:
    """`error` and what it wraps, outermost first: explicit causes, unsuppressed contexts,
    urllib3's `reason`, exceptions in `args` (requests and urllib3 nest a few levels)."""
    seen: list[BaseException] = [error]
    for current in seen:
        if len(seen) >= limit:
            break
        nested = [current.__cause__, None if current.__suppress_context__ else current.__context__,
                  getattr(current, "reason", None), *current.args]
        seen.extend(x for x in nested if isinstance(x, BaseException) and all(x is not s for s in seen))
    return seen[:limit]


def certificate_dates(path: str | os.PathLike[str]) -> str | None:
    """'<file> expired on …' / '<file> is not valid before …' when the certificate is outside its dates now."""
    from cryptography import x509  # when needed: a diagnosis of a text or an exception needs none

    from .._files import read_input

    try:  # bounded like every input: a diagnosis must not hang on /dev/zero given as a certificate
        certificate = x509.load_pem_x509_certificate(read_input(path, "certificate"))
    except (TpmtlsError, ValueError):
        return None
    now = datetime.datetime.now(datetime.timezone.utc)
    if certificate.not_valid_after_utc < now:
        return f"{path} expired on {certificate.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"
    if certificate.not_valid_before_utc > now:
        return f"{path} is not valid before {certificate.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC"
    return None


def own_certificate_problem(path: str | os.PathLike[str] | None) -> str | None:
    """Our certificate outside its dates, said before any peer is blamed: "<file> expired on …; renew it: <the
    command that applies>" (from its renewal record: docs/renewal.md), or None when it is in date."""
    if path is None:
        return None
    dates = certificate_dates(path)
    if dates is None:
        return None
    from ..enroll.renewal import renewal_command  # the record beside it, or a copy's pointer to one

    return f"{dates}; renew it: {renewal_command(path)}"


# --- rules ----------------------------------------------------------------------------------


def _verification(e: BaseException) -> Diagnosis | None:
    """The stdlib's own verdict on the peer's certificate (`verify_code`), when it gave one."""
    if not isinstance(e, ssl.SSLCertVerificationError):
        return None
    reason = _short(e)
    if e.verify_code in (_V_HOSTNAME_MISMATCH, _V_IP_MISMATCH):
        return Diagnosis(Cause.NAME_MISMATCH, reason)
    if e.verify_code in (_V_EXPIRED, _V_NOT_YET_VALID):
        return Diagnosis(Cause.EXPIRED, reason, not_yet_valid=e.verify_code == _V_NOT_YET_VALID)
    return None  # urllib3's hostname check is a CertificateError too: read its words


def _from_words(words: str, reason: str, ours: str | os.PathLike[str] | None) -> Diagnosis | None:
    """The cause in an error's text (lower case, "_" as " "), TLS causes first."""
    if any(w in words for w in _NOT_TLS):
        return Diagnosis(Cause.NOT_TLS, reason)
    alert = _ALERT.search(words)
    if alert:
        said = (alert.group(1) or alert.group(2)).strip()
        said = _GO_ALERTS.get(said, said)
        if said == "certificate expired":
            dates = (certificate_dates(ours) or "") if ours else ""
            return Diagnosis(Cause.EXPIRED, reason, ours=True, not_yet_valid="not valid before" in dates, dates=dates,
                             alert=said)
        if any(a in said for a in _REFUSING_ALERTS):
            return _refused(reason, ours, said)
        return Diagnosis(Cause.TLS_FAILED, reason, alert=said)
    if any(w in words for w in _HTTP_REFUSALS):
        return _refused(reason, ours)
    if any(w in words for w in _NAME_MISMATCH):
        return Diagnosis(Cause.NAME_MISMATCH, reason, names=_names(reason))
    if any(w in words for w in _THEIRS_EXPIRED):
        return Diagnosis(Cause.EXPIRED, reason, not_yet_valid="not yet valid" in words and " is after " not in words)
    if any(w in words for w in _UNTRUSTED):
        return Diagnosis(Cause.UNTRUSTED, reason)
    if any(w in words for w in _CLOSED) or words.rstrip().endswith(": eof"):
        return Diagnosis(Cause.CLOSED, reason)
    if any(w in words for w in _TIMEOUT):
        return Diagnosis(Cause.TIMEOUT, reason)
    if any(w in words for w in _UNREACHABLE):
        return Diagnosis(Cause.UNREACHABLE, reason)
    return None


def _from_type(e: BaseException) -> Diagnosis | None:
    """Connection-level causes by exception type (the text of these varies by platform)."""
    name = type(e).__name__
    if isinstance(e, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError, BrokenPipeError,
                      ConnectionAbortedError)) or name in ("RemoteDisconnected", "SysCallError"):
        return Diagnosis(Cause.CLOSED, _short(e))
    if name in ("NewConnectionError", "NameResolutionError"):  # urllib3 files these under ConnectTimeoutError
        return None  # the socket error inside says which
    if isinstance(e, TimeoutError) or name in ("ConnectTimeoutError", "ReadTimeoutError", "Timeout",
                                                "ConnectTimeout", "ReadTimeout"):
        return Diagnosis(Cause.TIMEOUT, _short(e))
    if isinstance(e, OSError) and not isinstance(e, ssl.SSLError) and (
            isinstance(e, ConnectionRefusedError) or e.errno in _UNREACHABLE_ERRNOS or name == "gaierror"):
        return Diagnosis(Cause.UNREACHABLE, _short(e))
    return None


def _refused(reason: str, ours: str | os.PathLike[str] | None, alert: str = "") -> Diagnosis:
    """A refusal of our certificate; its own dates, when they are wrong, say why."""
    dates = certificate_dates(ours) if ours else None
    if dates:
        return Diagnosis(Cause.EXPIRED, reason, ours=True, not_yet_valid="not valid before" in dates, dates=dates,
                         alert=alert)
    return Diagnosis(Cause.REFUSED, reason, alert=alert)


# --- texts ----------------------------------------------------------------------------------


def _is_tls_error(e: BaseException) -> bool:
    return isinstance(e, ssl.SSLError) or "SSL" in type(e).__name__ or type(e).__module__ == "OpenSSL.SSL"


def _normal(text: str) -> str:
    return text.lower().replace("_", " ")


def _words(e: BaseException) -> str:
    """An exception's text for matching: its message, and OpenSSL's reason code when it has one."""
    code = getattr(e, "reason", None)
    return _normal(f"{e} | {code if isinstance(code, str) else ''}")


def _one_line(text: str, limit: int = 200) -> str:
    return " ".join(text.split())[:limit]


def _short(e: BaseException) -> str:
    """The words of one error that a message can quote: "tlsv1 alert unknown ca", "Connection refused"."""
    if type(e).__module__ == "OpenSSL.SSL" and e.args and isinstance(e.args[0], list):
        reasons = [str(item[2]) for item in e.args[0] if isinstance(item, tuple) and len(item) == 3]
        if reasons:
            return _one_line("; ".join(reasons))
    if isinstance(e, OSError) and not isinstance(e, ssl.SSLError) and e.strerror:
        return _one_line(e.strerror)
    text = str(e)
    found = re.search(r"\[SSL: [A-Z0-9_]+\] (.*?)\s*\(_ssl\.c:\d+\)", text)
    if found:
        return _one_line(found.group(1))
    if "Caused by " in text:  # urllib3's "HTTPSConnectionPool(…): Max retries exceeded … (Caused by X('…'))"
        text = text.split("Caused by ", 1)[1].removesuffix(")")
    if text.startswith("HTTPSConnection(") and "): " in text:  # urllib3's NewConnectionError prefix
        text = text.split("): ", 1)[1]
    text = re.sub(r"^_ssl\.c:\d+: |\s*\(_ssl\.c:\d+\)", "", text.strip())  # where in CPython, not why
    while len(text) > 1 and text[0] in "'\"" and text[-1] in "'\"":
        text = text[1:-1]
    return _one_line(text or type(e).__name__)


def _go_reason(text: str) -> str:
    """The last clause of a Go error chain ('Get "https://…": remote error: tls: bad certificate')."""
    line = next((ln for ln in reversed(text.strip().splitlines()) if ln.strip()), text)
    if '": ' in line:
        line = line.rsplit('": ', 1)[1]
    return _one_line(line)


def _names(reason: str) -> str:
    """The names a certificate holds, when the error lists them (urllib3, Go)."""
    listed = re.search(r"doesn't match (?:either of )?(.+)$", reason) or re.search(r"is valid for (.+?), not ", reason)
    return listed.group(1).replace("'", "").strip() if listed else ""


__all__ = ["Cause", "Diagnosis", "causes", "certificate_dates", "diagnose", "diagnose_response", "diagnose_text",
           "own_certificate_problem"]
