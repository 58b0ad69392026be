"""`tpmtls csr`: a certificate signing request signed inside the TPM."""

from __future__ import annotations

import argparse

from cryptography.hazmat.primitives.serialization import Encoding

from .._files import check_writable, write_atomic
from ..pki import build_csr
from ..tpm import connect
from ._common import add_password_file, add_tcti, read_secret_file, say


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("csr", help="write a CSR signed by a TPM key")
    p.add_argument("--key", required=True, metavar="KEY", help="key file or handle:0x81…")
    p.add_argument("--subject", required=True, help="e.g. 'CN=client,O=Acme' or '/O=Acme/CN=client'")
    p.add_argument("--san", action="append", default=[], metavar="TYPE:VALUE",
                   help="subjectAltName: DNS:host, IP:addr, URI:…, email:… (repeat or comma-separate)")
    p.add_argument("--out", required=True, metavar="FILE", help="CSR file to write (PEM)")
    p.add_argument("--force", action="store_true", help="replace FILE if it exists")
    add_password_file(p)
    add_tcti(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = check_writable(args.out, args.force, inputs=(args.key, args.password_file))
    key = connect(args.tcti).load_key(args.key, read_secret_file(args.password_file))
    csr = build_csr(key, args.subject, args.san)
    write_atomic(out, csr.public_bytes(Encoding.PEM), 0o644)
    say(f"wrote CSR for {csr.subject.rfc4514_string()} ({key.algorithm}, signed in the TPM) to {out}")
    return 0
