"""Every command's --help ends with examples, the environment it reads and its exit statuses, and
every example is a command line the real parser accepts (tpmtls/cli/_help.py)."""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys

import pytest

from tpmtls.cli import build_parser
from tpmtls.cli._help import COMMANDS
from tpmtls.cli.pull import build_parser as pull_parser
from tpmtls.cli.push import build_parser as push_parser


def _paths(parser: argparse.ArgumentParser, path: str = "") -> list[str]:
    found = [path or "tpmtls"]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action._name_parser_map.items():
                found += _paths(sub, f"{path} {name}".strip())
    return found


def test_every_command_has_its_help_sections_and_no_other_entry_exists():
    paths = _paths(build_parser()) + ["tpmtls-push", "tpmtls-pull"]
    assert sorted(paths) == sorted(COMMANDS)


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_help_ends_with_examples_environment_exit_status(path):
    if path in ("tpmtls-push", "tpmtls-pull"):
        argv = [sys.executable, "-m", f"tpmtls.cli.{path.split('-')[1]}", "--help"]
    else:
        argv = [sys.executable, "-m", "tpmtls", *([] if path == "tpmtls" else path.split()), "--help"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout
    assert "\nexamples:\n  " in out and "\nenvironment:\n  " in out and "\nexit status:\n  0    done" in out
    assert out.index("examples:") < out.index("environment:") < out.index("exit status:")
    assert "TPMTLS_DEBUG" in out.split("environment:", 1)[1]


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_examples_parse(path):
    examples, _ = COMMANDS[path]
    parsers = {"tpmtls": build_parser, "tpmtls-push": push_parser, "tpmtls-pull": pull_parser}
    for example in examples:
        program, *argv = shlex.split(example)
        parsers[program]().parse_args(argv)  # exits 2 with one line if an example went stale
