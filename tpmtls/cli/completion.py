"""`tpmtls completion {bash,zsh}`: shell completion for tpmtls, tpmtls-push and tpmtls-pull.

Generated from the very argparse parsers the commands use (shtab), so it cannot drift from
their options; arguments that name files or directories complete as such.
"""

from __future__ import annotations

import argparse
import sys

from ._common import Parser

PROGRAMS = ("tpmtls", "tpmtls-push", "tpmtls-pull")
# Metavars that name a file or a directory (the spellings the parsers use).
_FILES = {"FILE", "F", "C", "K", "CA", "PEM", "CERT", "CSR", "BLOB", "EK.pem", "CRL", "OUT", "HANDLEFILE", "KEY"}
_DIRS = {"DIR", "D"}


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "completion", help="print shell completion for bash or zsh",
        description="Print a completion script for tpmtls, tpmtls-push and tpmtls-pull.",
        epilog="examples:\n"
               "  tpmtls completion bash > /etc/bash_completion.d/tpmtls     # bash, every user\n"
               "  eval \"$(tpmtls completion zsh)\"                            # zsh, in ~/.zshrc\n"
               "  tpmtls completion zsh --program tpmtls > ~/.zfunc/_tpmtls   # zsh, a file in $fpath")
    p.add_argument("shell", choices=("bash", "zsh"))
    p.add_argument("--program", choices=PROGRAMS, action="append",
                   help="only this command's completion (repeatable; default: all three)")
    p.set_defaults(func=run)


def _parsers(args: argparse.Namespace) -> dict[str, Parser]:
    """The three commands' parsers; tpmtls's own comes from its builder, which set_defaults handed us
    (importing it here would make tpmtls.cli and this module import each other)."""
    from .pull import build_parser as pull_parser
    from .push import build_parser as push_parser

    return {"tpmtls": args.build_parser(), "tpmtls-push": push_parser(), "tpmtls-pull": pull_parser()}


def _mark_paths(parser: argparse.ArgumentParser) -> None:
    """Tell shtab which arguments are files or directories, in this parser and every subparser."""
    import shtab

    for action in parser._actions:
        metavar = action.metavar if isinstance(action.metavar, str) else None
        if metavar in _FILES:
            action.complete = shtab.FILE  # type: ignore[attr-defined]
        elif metavar in _DIRS:
            action.complete = shtab.DIRECTORY  # type: ignore[attr-defined]
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action._name_parser_map.values()):
                _mark_paths(sub)


def run(args: argparse.Namespace) -> int:
    import shtab

    parsers = _parsers(args)
    for name in args.program or PROGRAMS:
        _mark_paths(parsers[name])
        sys.stdout.write(shtab.complete(parsers[name], shell=args.shell))
        sys.stdout.write("\n")
    return 0


__all__ = ["add_parser"]
