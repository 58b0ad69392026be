"""`tpmtls doctor`: the first command to run — the TPM and who may use it, the certificates in
both certs.d roots, Docker's credential helper, the clock; one line per finding (tpmtls/doctor)."""

from __future__ import annotations

import argparse
import sys

from ._common import add_format, add_tcti, emit, say


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("doctor", help="check the TPM and its permissions, certs.d, the credential helper, the clock",
                       description="Check everything tpmtls relies on and say, for each problem, what to do. "
                       "Exits 1 when any check failed (warnings do not fail).")
    add_tcti(p)
    add_format(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..doctor import FAILED, OK
    from ..doctor import run as run_checks

    report = run_checks(args.tcti)
    v = report.versions

    def lines() -> list[str]:
        shown = [f"tpmtls {v['tpmtls']} (Python {v['python']}); tpm2-pytss {v['tpm2-pytss']}; cryptography "
                 f"{v['cryptography']} ({v['cryptography-openssl']}); pyOpenSSL {v['pyOpenSSL']}; ssl: {v['ssl-openssl']}"]
        shown += [f.line() for f in report.findings]
        p = report.pool
        shown.append(f"pool: {p['contexts_open']} of {p['size']} contexts open, {p['signatures']} signatures, "
                     f"{p['errors']} errors, {p['rebuilds']} rebuilds")
        return shown

    if getattr(args, "quiet", 0) and args.format == "text":
        for finding in report.findings:  # -q: the problems only
            if finding.status not in (OK, "info"):
                say(finding.line())
    else:
        emit(args, {"tpmtls": v["tpmtls"], **report.as_dict()}, lines)
    failed = [f for f in report.findings if f.status == FAILED]
    if failed:
        more = f" (and {len(failed) - 1} more problem{'s' if len(failed) > 2 else ''} above)" if len(failed) > 1 else ""
        print(f"tpmtls doctor: {failed[0].message}{more}", file=sys.stderr, flush=True)
        return 1
    return 0


__all__ = ["add_parser"]
