"""`tpmtls key wrap|import-wrapped|ek`: move a key to exactly one TPM (docs/key-transfer.md)."""

from __future__ import annotations

import argparse

from .. import connect
from .._files import check_writable, write_atomic
from ..tpm.transfer import EK_TYPES, import_wrapped, read_ek, read_file, wrap_key
from ._common import add_tcti, read_secret_file, say


def register(key_parser: argparse.ArgumentParser) -> None:
    """Add the three commands to the existing `tpmtls key` group."""
    ksub = next(a for a in key_parser._actions if isinstance(a, argparse._SubParsersAction))
    if isinstance(ksub.metavar, str) and ksub.metavar.endswith("}"):
        ksub.metavar = ksub.metavar[:-1] + ",wrap,import-wrapped,ek}"

    p = ksub.add_parser("wrap", help="owner side, no TPM: wrap a PEM key so only the TPM with this EK can import it")
    p.add_argument("pem", metavar="PEM", help="the software private key (PEM)")
    p.add_argument("--ek", required=True, metavar="EK.pem", help="the machine's EK public key ('tpmtls key ek' there)")
    p.add_argument("--out", required=True, metavar="BLOB", help="wrapped key to write (safe to send: only that TPM opens it)")
    p.add_argument("--force", action="store_true", help="replace BLOB if it exists")
    p.add_argument("--pem-password-file", metavar="F", help="file holding the PEM's password, if encrypted")
    p.set_defaults(func=wrap)

    p = ksub.add_parser("import-wrapped", help="machine side: import a wrapped key into this TPM, write its key file")
    p.add_argument("blob", metavar="BLOB", help="output of 'tpmtls key wrap'")
    p.add_argument("--out", required=True, metavar="FILE", help="TSS2 PRIVATE KEY file to write")
    p.add_argument("--force", action="store_true", help="replace FILE if it exists")
    add_tcti(p)
    p.set_defaults(func=import_)

    p = ksub.add_parser("ek", help="write this TPM's endorsement key public (and its certificate, if any)")
    p.add_argument("--out", required=True, metavar="EK.pem", help="PEM file to write")
    p.add_argument("--type", choices=sorted(EK_TYPES), default="rsa", help="EK algorithm (default rsa: RSA-2048)")
    p.add_argument("--force", action="store_true", help="replace EK.pem if it exists")
    add_tcti(p)
    p.set_defaults(func=ek)


def wrap(args: argparse.Namespace) -> int:
    out = check_writable(args.out, args.force)
    pem = read_file(args.pem, "private key")
    ek_pem = read_file(args.ek, "EK public key")
    blob = wrap_key(pem, ek_pem, pem_password=read_secret_file(args.pem_password_file),
                    source=args.pem, ek_source=args.ek)
    write_atomic(out, blob, 0o644)
    say(f"wrapped {args.pem} for the TPM whose EK is {args.ek}; blob {out} (only that TPM can import it); "
        f"{args.pem} is still a clear key: keep it safe or delete it")
    return 0


def import_(args: argparse.Namespace) -> int:
    check_writable(args.out, args.force)
    key = import_wrapped(connect(args.tcti), read_file(args.blob, "wrapped key"), args.out,
                         source=args.blob, overwrite=args.force)
    say(f"imported {key.algorithm} key into the TPM; key file {args.out} (TSS2 PRIVATE KEY, parent 0x40000001)")
    return 0


def ek(args: argparse.Namespace) -> int:
    out = check_writable(args.out, args.force)
    info = read_ek(connect(args.tcti), args.type)
    write_atomic(out, info.to_pem(), 0o644)
    cert = "with its certificate" if info.certificate else "no EK certificate in this TPM's NV"
    say(f"{info.ek_type} public key written to {out} ({cert}); name {info.name.hex()}")
    return 0
