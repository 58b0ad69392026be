"""The `tpmtls` command: thin argument parsing over the library; one line per error.

One module per top-level command, each adding its own parser (and its subcommands) with
`add_parser(sub)`; `_common` and `_registry_args` are what several share. The other
console scripts are `push` (tpmtls-push), `pull` (tpmtls-pull) and `credential_helper`
(docker-credential-tpmtls): importing this package must stay cheap for them (it runs
before their module), so the commands' modules are imported when `tpmtls`'s parser is built.
"""

from __future__ import annotations

import importlib
import sys

from ._common import Parser, add_tcti, run_main
from ._help import finish as finish_help

#: The commands' modules, in the order `tpmtls --help` lists them.
COMMANDS = ("doctor", "key", "csr", "connect", "ca", "certs", "proxy", "daemon_proxy", "enroll", "enroll_agent",
            "enroll_server", "quickstart", "completion")


def build_parser() -> Parser:
    parser = Parser(prog="tpmtls", description="Mutual TLS with a private key that never leaves the TPM.")
    parser.set_defaults(verbose=0, quiet=0, build_parser=build_parser)  # `completion` generates from it
    add_tcti(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    finish_help(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: exit 0 on success; 1 with one line on stderr on failure; 2 on bad usage."""
    return run_main("tpmtls", build_parser(), lambda args: int(args.func(args)), argv)


if __name__ == "__main__":
    sys.exit(main())
