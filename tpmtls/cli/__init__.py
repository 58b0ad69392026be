"""The `tpmtls` command: thin argument parsing over the library; one line per error."""

from __future__ import annotations

import os
import sys

from .. import __version__
from ..errors import TpmtlsError
from . import connect, csr, doctor, key
from ._common import Parser, add_tcti


def build_parser() -> Parser:
    parser = Parser(prog="tpmtls", description="Mutual TLS with a private key that never leaves the TPM.")
    parser.add_argument("--version", action="version", version=f"tpmtls {__version__}")
    add_tcti(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    doctor.register(sub)
    key.register(sub)
    csr.register(sub)
    connect.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: exit 0 on success; 1 with one line on stderr on failure; 2 on bad usage."""
    args = build_parser().parse_args(argv)
    if not hasattr(args, "tcti"):
        args.tcti = None
    try:
        return int(args.func(args))
    except TpmtlsError as e:
        print(f"tpmtls: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tpmtls: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - a bug: still one line, traceback on request
        if os.environ.get("TPMTLS_DEBUG"):
            raise
        print(f"tpmtls: internal error: {type(e).__name__}: {e} (set TPMTLS_DEBUG=1 for a traceback)", file=sys.stderr)
        return 70


if __name__ == "__main__":
    sys.exit(main())
