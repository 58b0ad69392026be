"""What every tpmtls command shares: a one-line-error parser with --version, -v/-q and help
sections, --tcti, --format, password files, logging and the error-to-exit-status rule."""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import textwrap
from pathlib import Path
from types import FrameType
from typing import Any, Callable, NoReturn

from .._version import __version__
from ..errors import UsageError


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps prose paragraphs, keeps indented lines (examples) and section headings as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out = []
        for paragraph in re.split(r"\n\s*\n", text.strip("\n")):
            lines = paragraph.splitlines()
            if any(line.startswith(" ") for line in lines) or lines[0].endswith(":"):
                out.append("\n".join(indent + line for line in lines))
            else:
                out.append(textwrap.fill(" ".join(paragraph.split()), width, initial_indent=indent,
                                         subsequent_indent=indent))
        return "\n\n".join(out)


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2), not a usage dump, and every
    parser — each command and subcommand — has --version, -v/--verbose and -q/--quiet."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)
        self.add_argument("--version", action="version", version=f"{self.prog.split()[0]} {__version__}")
        # SUPPRESS: a subcommand's own -v/-q only count when given (see add_tcti)
        self.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                          help="more log lines (debug)")
        self.add_argument("-q", "--quiet", action="count", default=argparse.SUPPRESS,
                          help="less output: warnings and errors only (-qq: errors only)")

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_format(parser: argparse.ArgumentParser) -> None:
    """--format {text,json}: one JSON object on stdout instead of the lines (docs/scripting.md)."""
    parser.add_argument("--format", choices=("text", "json"), default="text",
                        help="text (default), or one JSON object on stdout whose schema docs/scripting.md gives")


def emit(args: argparse.Namespace, data: dict[str, Any], lines: "list[str] | Callable[[], list[str]]") -> None:
    """Print `data` as JSON with --format json, else the text lines (nothing with -q)."""
    if getattr(args, "format", "text") == "json":
        print(json.dumps(data, indent=2), flush=True)
        return
    if getattr(args, "quiet", 0):
        return
    for line in lines() if callable(lines) else lines:
        say(line)


def add_tcti(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    # SUPPRESS on subcommands so `tpmtls --tcti X key …` is not reset by the
    # subcommand's own default (an argparse quirk).
    parser.add_argument(
        "--tcti",
        default=None if top else argparse.SUPPRESS,
        help="TPM to use (default: $TPMTLS_TCTI, $TPM2TOOLS_TCTI, device:/dev/tpmrm0)",
    )


def add_password_file(parser: argparse.ArgumentParser, help: str = "file holding the key's password") -> None:  # noqa: A002 - argparse's name
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


def key_password(key: str, password_file: str | None) -> bytes | None:
    """The password for a TPM key file: from --password-file, else asked on the terminal
    (like ssh asks for a key's passphrase), else a one-line error saying how to give it.

    None when the key needs none (or is not a TPM key file: OpenSSL judges those).
    """
    if password_file is not None:
        return read_secret_file(password_file)
    from ..errors import KeyFileError
    from ..tpm.keyfile import read_key_reference

    try:
        if read_key_reference(key).empty_auth:
            return None
    except KeyFileError:
        return None  # a software key or a broken file: the TLS set-up says what is wrong
    if not sys.stdin.isatty():
        raise UsageError(f"{key}: this key has a password: give it with --password-file F "
                         "(or run on a terminal to be asked for it)")
    import getpass

    try:
        secret = getpass.getpass(f"Password for {key}: ")
    except EOFError:
        secret = ""
    if not secret:
        raise UsageError(f"{key}: no password entered (the key has one; or give it with --password-file F)")
    return secret.encode()


def split_target(target: str) -> tuple[str, int]:
    """HOST:PORT (or [v6]:PORT) → (host, port), or a one-line usage error."""
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UsageError(f"{target!r}: write the target as HOST:PORT")
    return host.strip("[]"), int(port)


def say(text: str) -> None:
    print(text, file=sys.stdout, flush=True)


def serve_until_signal(server: Any) -> None:
    """Run `server.serve()` until SIGTERM or SIGINT asks it to `stop()` (systemd stops with SIGTERM)."""

    from .._systemd import notify

    def _stop(signum: int, frame: FrameType | None) -> None:
        notify("STOPPING=1")
        server.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    server.serve()


def run_main(prog: str, parser: argparse.ArgumentParser, func: "Callable[[argparse.Namespace], int]",
             argv: list[str] | None) -> int:
    """Parse, run, and turn every error into one line on stderr with an exit code."""
    import os

    from .. import _log
    from ..errors import TpmtlsError

    args = parser.parse_args(argv)
    if not hasattr(args, "tcti"):
        args.tcti = None
    verbosity = getattr(args, "verbose", 0) - getattr(args, "quiet", 0)
    name = f"{prog} {args.command}" if getattr(args, "command", None) else prog
    _log.setup(name, verbosity, timestamps=getattr(args, "long_running", False))
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
