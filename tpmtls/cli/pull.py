"""`tpmtls-pull HOST[:PORT]/REPO[:TAG|@DIGEST] DEST`: pull over TPM-backed mTLS."""

from __future__ import annotations

import argparse
import sys

from ._common import Parser, add_format, add_tcti, emit, run_main
from ._help import finish as finish_help
from ._registry_args import add_output_args, add_registry_args, progress_for, registry_options, write_digest


def build_parser() -> Parser:
    p = Parser(prog="tpmtls-pull", description="Pull an image from a registry that requires a client certificate "
               "whose key lives in the TPM.")
    p.add_argument("source", metavar="HOST[:PORT]/REPO[:TAG|@DIGEST]")
    p.add_argument("destination", metavar="DEST", help="oci:PATH, docker-archive:PATH or docker-daemon:")
    add_registry_args(p)
    add_output_args(p, "pulled")
    add_format(p)
    add_tcti(p, top=True)
    p.set_defaults(verbose=0, quiet=0)
    finish_help(p, "tpmtls-pull")
    return p


def run(args: argparse.Namespace) -> int:
    from ..registry.pull import pull

    options = registry_options(args)
    result = pull(args.source, args.destination, tcti=args.tcti, progress=progress_for(args), **options)
    write_digest(args, result.digest)
    emit(args, {"reference": str(result.reference), "digest": result.digest, "destination": result.destination}, [])
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main("tpmtls-pull", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
