"""What every tpmtls command shares: a one-line-error parser with --version, -v/-q and help
sections, --tcti, --format, password files, logging and the error-to-exit-status rule."""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import textwrap
from types import FrameType
from typing import Any, Callable, NoReturn

from .._hosts import is_host
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


#: A password is one line; a password file of more than this is something else.
MAX_PASSWORD_FILE = 64 << 10


def read_secret_file(path: str | None) -> bytes | None:
    """The first line of a password file, without its line break; None when no file given.

    An empty file (or /dev/null) is the empty password: what a key file flagged as having a
    password but created without one needs (`tpm2_encodeobject` without -p writes such files;
    tpm2-openssl takes the empty password for them too)."""
    if path is None:
        return None
    from .._files import read_input

    data = read_input(path, "password", MAX_PASSWORD_FILE)
    return data.splitlines()[0] if data else b""


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
        raise UsageError(f"{key}: this key has a password: give it with --password-file F (an empty file if it was "
                         "made without one), or run on a terminal to be asked for it")
    import getpass

    try:
        secret = getpass.getpass(f"Password for {key}: ")
    except EOFError:
        secret = ""
    return secret.encode()  # empty: the empty password, as tpm2-openssl takes it for such key files


def split_target(target: str, default_port: int | None = None) -> tuple[str, int]:
    """HOST:PORT (or [v6]:PORT) → (host, port), or a one-line usage error saying what is wrong.

    HOST: a DNS name (RFC 1123 labels) or an IPv4/IPv6 address; PORT: 1-65535."""
    shown = repr(target[:100])
    text = target.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        sep, port = rest[:1], rest[1:]
        if sep not in ("", ":") or ":" not in host:
            raise UsageError(f"{shown}: write an IPv6 address as [ADDRESS]:PORT")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            host, port = text, ""
    if not port and default_port is not None and not sep:
        port = str(default_port)
    if not host or not port:
        raise UsageError(f"{shown}: write it as HOST:PORT")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{shown}: the port must be a number from 1 to 65535")
    if not is_host(host):
        raise UsageError(f"{shown}: {host[:100]!r} is neither a host name nor an IP address")
    return host, int(port)


def seconds(text: str) -> float:
    """An argparse type: a positive, finite number of seconds (at most a day)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a number of seconds") from None
    if not 0 < value <= 86400:  # also false for NaN
        raise argparse.ArgumentTypeError(f"{text[:40]!r}: give seconds between 0 and 86400")
    return value


def count(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from `low` to `high`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value}: give a number from {low} to {high}")
        return value
    parse.__name__ = "count"
    return parse


def hours(text: str) -> float:
    """An argparse type: a positive, finite number of hours (at most ten years)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a number of hours") from None
    if not 0 < value <= 87600:
        raise argparse.ArgumentTypeError(f"{text[:40]!r}: give hours between 0 and 87600")
    return value


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


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so the same clean-up runs."""


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def exit_status(interrupt: KeyboardInterrupt) -> int:
    """128 + the signal's number, as a shell reports a command that a signal ended."""
    return 128 + (signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT)


def one_line(text: str) -> str:
    """An error's text as one line (a library's message may hold line breaks)."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip()) or text


def run_main(prog: str, parser: argparse.ArgumentParser, func: "Callable[[argparse.Namespace], int]",
             argv: list[str] | None) -> int:
    """Parse, run, and turn every error into one line on stderr with an exit code."""
    import os
    import warnings

    from .. import _log
    from ..errors import TpmtlsError

    args = parser.parse_args(argv)
    if not hasattr(args, "tcti"):
        args.tcti = None
    signal.signal(signal.SIGTERM, _terminate)  # like Ctrl-C: temp files go, one line is said
    # urllib3 warns (two lines) when the clock reads before its release; a certificate that is
    # then "not valid yet" is said in the failure's own line
    warnings.filterwarnings("ignore", message="System time is way off", module="urllib3")
    verbosity = getattr(args, "verbose", 0) - getattr(args, "quiet", 0)
    name = f"{prog} {args.command}" if getattr(args, "command", None) else prog
    _log.setup(name, verbosity, timestamps=getattr(args, "long_running", False) or getattr(args, "daemon", False))
    try:
        return int(func(args))
    except TpmtlsError as e:
        print(f"{prog}: {one_line(str(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(f"{prog}: {'terminated' if isinstance(e, Terminated) else 'interrupted'}", file=sys.stderr)
        return exit_status(e)
    except Exception as e:  # noqa: BLE001 - a bug: still one line, traceback on request
        if os.environ.get("TPMTLS_DEBUG"):
            raise
        print(f"{prog}: internal error: {type(e).__name__}: {e} (set TPMTLS_DEBUG=1 for a traceback)", file=sys.stderr)
        return 70
