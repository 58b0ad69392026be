"""`tpmtls-push IMAGE HOST[:PORT]/REPO[:TAG]`: docker push over TPM-backed mTLS."""

from __future__ import annotations

import argparse
import sys
import threading

from ._common import Parser, Terminated, add_format, add_tcti, emit, exit_status, run_main
from ._help import finish as finish_help
from ._registry_args import add_output_args, add_registry_args, progress_for, registry_options, write_digest


def build_parser() -> Parser:
    p = Parser(prog="tpmtls-push", description="Push an image to a registry that requires a client certificate "
               "whose key lives in the TPM.")
    p.add_argument("image", metavar="IMAGE",
                   help="a local daemon image (name or id), docker-archive:PATH, oci:PATH[:TAG|@DIGEST] or oci-archive:PATH")
    p.add_argument("destination", metavar="HOST[:PORT]/REPO[:TAG]")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]",
                   help="push only this platform's image (OCI layouts with several images or an index)")
    add_registry_args(p)
    add_output_args(p, "pushed")
    add_format(p)
    add_tcti(p, top=True)
    p.set_defaults(verbose=0, quiet=0)
    finish_help(p, "tpmtls-push")
    return p


def run(args: argparse.Namespace) -> int:
    from ..registry.push import push

    cancel = threading.Event()
    options = registry_options(args)  # before anything is sent: bad options, an unwritable --digestfile
    try:
        result = push(args.image, args.destination, tcti=args.tcti, progress=progress_for(args), cancel=cancel,
                      platform=args.platform, **options)
    except KeyboardInterrupt as e:
        cancel.set()
        what = "terminated" if isinstance(e, Terminated) else "interrupted"
        print(f"tpmtls-push: {what}; nothing was tagged. Run the same command again to resume "
              "(blobs already sent are skipped).", file=sys.stderr)
        return exit_status(e)
    write_digest(args, result.digest)
    emit(args, {"reference": str(result.reference), "tag": result.reference.ref, "digest": result.digest, "size": result.size,
                "uploaded": result.uploaded, "mounted": result.mounted, "existing": result.existing,
                "bytes_sent": result.bytes_sent}, [])  # the text line came with the progress
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main("tpmtls-push", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
