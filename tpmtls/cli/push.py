"""`tpmtls-push IMAGE HOST[:PORT]/REPO[:TAG]`: docker push over TPM-backed mTLS."""

from __future__ import annotations

import argparse
import sys
import threading

from ._common import Parser, add_tcti, run_main
from ._registry_args import add_registry_args, registry_options


def build_parser() -> Parser:
    p = Parser(prog="tpmtls-push", description="Push an image to a registry that requires a client certificate "
               "whose key lives in the TPM.")
    p.add_argument("image", metavar="IMAGE",
                   help="a local daemon image (name or id), docker-archive:PATH, oci:PATH[:TAG|@DIGEST] or oci-archive:PATH")
    p.add_argument("destination", metavar="HOST[:PORT]/REPO[:TAG]")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]",
                   help="push only this platform's image (OCI layouts with several images or an index)")
    add_registry_args(p)
    add_tcti(p, top=True)
    return p


def run(args: argparse.Namespace) -> int:
    from ..registry.push import print_progress_default, push

    cancel = threading.Event()
    try:
        push(args.image, args.destination, tcti=args.tcti, progress=print_progress_default(), cancel=cancel,
             platform=args.platform, **registry_options(args))
    except KeyboardInterrupt:
        cancel.set()
        print("tpmtls-push: interrupted; nothing was tagged. Run the same command again to resume "
              "(blobs already sent are skipped).", file=sys.stderr)
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main("tpmtls-push", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
