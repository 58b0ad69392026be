"""The `tpmtls` command: thin argument parsing over the library; one line per error."""

from __future__ import annotations

import sys

from .. import __version__
from . import (
    ca,
    certs_daemon,
    connect,
    csr,
    daemon_proxy,
    doctor,
    enroll_acme,
    enroll_pairing,
    key,
    key_transfer,
    proxy,
    quickstart,
)
from ._common import Parser, add_tcti, run_main


def build_parser() -> Parser:
    parser = Parser(prog="tpmtls", description="Mutual TLS with a private key that never leaves the TPM.")
    parser.add_argument("--version", action="version", version=f"tpmtls {__version__}")
    add_tcti(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    doctor.register(sub)
    key.register(sub)
    key_transfer.register(sub.choices["key"])
    csr.register(sub)
    connect.register(sub)
    ca.register(sub)
    certs_daemon.register(sub.choices["certs"])
    daemon_proxy.register(sub)
    proxy.register(sub)
    enroll_pairing.register(sub)
    quickstart.register(sub)
    enroll_acme.register(sub)  # after any other `enroll`: it adds its own only if none exists
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: exit 0 on success; 1 with one line on stderr on failure; 2 on bad usage."""
    return run_main("tpmtls", build_parser(), lambda args: int(args.func(args)), argv)


if __name__ == "__main__":
    sys.exit(main())
