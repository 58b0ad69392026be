"""`tpmtls quickstart`: the main job end to end on the embedded software TPM."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("quickstart", help="push to a local mTLS registry with a key in a software TPM, end to end")
    p.add_argument("--workdir", metavar="DIR", help="keep the files here (default: a temp dir, removed at the end)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..quickstart import run as quickstart

    return quickstart(Path(args.workdir) if args.workdir else None)
