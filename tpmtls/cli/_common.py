"""What every tpmtls command shares: a one-line-error parser, --tcti, password files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, NoReturn

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


def run_main(prog: str, parser: argparse.ArgumentParser, func: "Callable[[argparse.Namespace], int]",
             argv: list[str] | None) -> int:
    """Parse, run, and turn every error into one line on stderr with an exit code."""
    import os

    from ..errors import TpmtlsError

    args = parser.parse_args(argv)
    if not hasattr(args, "tcti"):
        args.tcti = None
    try:
        return int(func(args))
    except TpmtlsError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - a bug: still one line, traceback on request
        if os.environ.get("TPMTLS_DEBUG"):
            raise
        print(f"{prog}: internal error: {type(e).__name__}: {e} (set TPMTLS_DEBUG=1 for a traceback)", file=sys.stderr)
        return 70
