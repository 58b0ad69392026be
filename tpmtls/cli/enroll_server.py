"""`tpmtls enroll-server`: the Attestation CA and the ACME device-attest-01 server, issuing
from a file CA (the embedded default for one machine and the tests)."""

from __future__ import annotations

import argparse
import signal
import sys

from ..errors import UsageError
from ._common import say


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("enroll-server", help="Attestation CA + ACME device-attest-01 server issuing from a file CA")
    p.add_argument("--ca", required=True, metavar="DIR", help="file CA directory ('tpmtls ca init')")
    p.add_argument("--ek-roots", required=True, metavar="BUNDLE", help="PEM bundle of the TPM makers' EK CAs you trust")
    p.add_argument("--policy", required=True, metavar="FILE", help="PCR policy ('tpmtls enroll policy')")
    p.add_argument("--listen", default="127.0.0.1:8443", metavar="ADDR:PORT",
                   help="where to listen (default 127.0.0.1:8443; port 0 picks a free one)")
    p.add_argument("--attestation-roots", metavar="BUNDLE",
                   help="CAs whose AK certificates the ACME side accepts (default: this server's Attestation CA)")
    p.set_defaults(func=run)


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"--listen {text!r}: write it as ADDRESS:PORT, e.g. 127.0.0.1:8443")
    return host, int(port)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT; one line per refusal on stderr."""
    from ..enroll.acme_server import EnrollApp, EnrollServer

    host, port = _listen(args.listen)
    app = EnrollApp(args.ca, args.ek_roots, args.policy, attestation_roots=args.attestation_roots)
    server = EnrollServer(app, host, port)

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    say(f"tpmtls enroll-server: ACME directory {server.directory_url}; Attestation CA {server.url}/attest; "
        f"issuing from {args.ca}")
    sys.stdout.flush()
    try:
        server.serve_forever()
    finally:
        server.stop()
    return 0


__all__ = ["add_parser"]
