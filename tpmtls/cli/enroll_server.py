"""`tpmtls enroll-server`: the Attestation CA and the ACME device-attest-01 server, issuing
from a file CA (the embedded default for one machine and the tests)."""

from __future__ import annotations

import argparse
import sys

from ..errors import UsageError
from ._common import hours, say


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("enroll-server", help="Attestation CA + ACME device-attest-01 server issuing from a file CA")
    p.add_argument("--ca", required=True, metavar="DIR", help="file CA directory ('tpmtls ca init')")
    p.add_argument("--ek-roots", required=True, metavar="BUNDLE", help="PEM bundle of the TPM makers' EK CAs you trust")
    p.add_argument("--policy", required=True, metavar="FILE", help="PCR policy ('tpmtls enroll policy')")
    p.add_argument("--listen", default="127.0.0.1:8443", metavar="ADDR:PORT",
                   help="where to listen (default 127.0.0.1:8443; port 0 picks a free one)")
    p.add_argument("--attestation-roots", metavar="BUNDLE",
                   help="CAs whose AK certificates the ACME side accepts (default: this server's Attestation CA)")
    add_server_state_options(p)
    p.set_defaults(func=run, long_running=True)


def add_server_state_options(p: argparse.ArgumentParser) -> None:
    """enroll-server's database, public name, EK hygiene and certificate lifetime."""
    p.add_argument("--db", metavar="URL", help="state database: sqlite:PATH (default sqlite:enroll.db in the CA "
                                               "directory) or postgresql://USER@HOST/DB for several instances")
    p.add_argument("--public-url", metavar="https://NAME:PORT",
                   help="the URL clients reach this server by: its ACME URLs and its certificate's name "
                        "(required with a wildcard --listen such as 0.0.0.0:8443)")
    p.add_argument("--ek-deny", metavar="FILE", help="EK identifiers (urn:ek:sha256:…) to refuse, one per line; "
                                                    "re-read when it changes")
    p.add_argument("--ek-crls", metavar="FILE", help="TPM makers' CRLs (PEM); EK certificates they revoke are refused")
    p.add_argument("--cert-hours", type=hours, default=24.0, metavar="H",
                   help="lifetime of the client certificates issued (default 24)")


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"--listen {text!r}: write it as ADDRESS:PORT, e.g. 127.0.0.1:8443")
    return host, int(port)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT; one line per refusal on stderr."""
    from ..enroll.acme_server import EnrollApp, EnrollServer, Settings

    host, port = _listen(args.listen)
    if not 0 < args.cert_hours <= 24 * 825:
        raise UsageError(f"--cert-hours {args.cert_hours:g}: give a lifetime between a few minutes and 825 days")
    app = EnrollApp(args.ca, args.ek_roots, args.policy, attestation_roots=args.attestation_roots, db=args.db,
                    settings=Settings(cert_hours=args.cert_hours), ek_deny=args.ek_deny, ek_crls=args.ek_crls)
    try:
        server = EnrollServer(app, host, port, public_url=args.public_url)
        say(f"tpmtls enroll-server: ACME directory {server.directory_url}; Attestation CA {server.url}/attest; "
            f"issuing from {args.ca}; state in {app.store.url}")
        sys.stdout.flush()
        try:
            server.serve_forever()
        finally:
            server.stop()
    finally:
        app.close()
    return 0


__all__ = ["add_parser"]
