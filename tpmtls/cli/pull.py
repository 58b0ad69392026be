"""`tpmtls-pull HOST[:PORT]/REPO[:TAG|@DIGEST] DEST`: pull over TPM-backed mTLS."""

from __future__ import annotations

import argparse
import sys

from ._common import Parser, add_tcti, run_main
from ._registry_args import add_registry_args, registry_options


def build_parser() -> Parser:
    p = Parser(prog="tpmtls-pull", description="Pull an image from a registry that requires a client certificate "
               "whose key lives in the TPM.")
    p.add_argument("source", metavar="HOST[:PORT]/REPO[:TAG|@DIGEST]")
    p.add_argument("destination", metavar="DEST", help="oci:PATH, docker-archive:PATH or docker-daemon:")
    add_registry_args(p)
    add_tcti(p, top=True)
    return p


def run(args: argparse.Namespace) -> int:
    from ..registry.pull import pull
    from ..registry.push import print_progress_default

    pull(args.source, args.destination, tcti=args.tcti, progress=print_progress_default(), **registry_options(args))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main("tpmtls-pull", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
