"""What every tpmtls command shares: a one-line-error parser, --tcti, password files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from ..errors import UsageError


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2), not a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_tcti(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    # SUPPRESS on subcommands so `tpmtls --tcti X key …` is not reset by the
    # subcommand's own default (an argparse quirk).
    parser.add_argument(
        "--tcti",
        default=None if top else argparse.SUPPRESS,
        help="TPM to use (default: $TPMTLS_TCTI, $TPM2TOOLS_TCTI, device:/dev/tpmrm0)",
    )


def add_password_file(parser: argparse.ArgumentParser, help: str = "file holding the key's password") -> None:
    parser.add_argument("--password-file", metavar="F", help=help)


def read_secret_file(path: str | None) -> bytes | None:
    """The first line of a password file, without its newline; None when no file given."""
    if path is None:
        return None
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise UsageError(f"{p}: cannot read password file: {e.strerror}") from None
    secret = data.splitlines()[0] if data.strip() else b""
    if not secret:
        raise UsageError(f"{p}: password file is empty")
    return secret


def say(text: str) -> None:
    print(text, file=sys.stdout, flush=True)
