"""`tpmtls ca init|issue`: a small file CA (for one machine, tests and the quickstart)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from .._files import check_writable, read_input, write_atomic
from ..errors import UsageError
from ..pki.ca import FileCA
from ..pki.csr import load_pem_csr
from ..tpm import connect
from ._common import add_format, add_tcti, emit, say


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`tpmtls ca` and its subcommands."""
    ca = sub.add_parser("ca", help="a small file CA (for one machine, tests and the quickstart)")
    csub = ca.add_subparsers(dest="ca_command", required=True)
    p = csub.add_parser("init", help="create ca.crt and ca.key (0600) in DIR")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--name", required=True, help="the CA's common name")
    p.add_argument("--tpm", action="store_true", help="make the CA key inside this machine's TPM (ca.key is then "
                                                      "a TPM key file; issuing needs this TPM)")
    add_tcti(p)
    p.set_defaults(func=init)
    p = csub.add_parser("issue", help="sign a CSR")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--csr", required=True, metavar="FILE")
    role = p.add_mutually_exclusive_group(required=True)
    role.add_argument("--client", action="store_true", help="a client certificate (clientAuth)")
    role.add_argument("--server", action="store_true", help="a server certificate (serverAuth; needs --san)")
    p.add_argument("--san", action="append", default=[], metavar="DNS:h,IP:a")
    p.add_argument("--out", required=True, metavar="CERT")
    p.add_argument("--force", action="store_true", help="replace CERT if it exists")
    add_tcti(p)
    add_format(p)
    p.set_defaults(func=issue)


def init(args: argparse.Namespace) -> int:
    if not args.name.strip():
        raise UsageError("--name: give the CA a common name, e.g. --name 'Acme registry CA'")
    ca = FileCA.init(args.dir, args.name, tpm=connect(args.tcti) if args.tpm else None)
    where = "a key inside the TPM; the file only names it" if ca.in_tpm else "mode 0600"
    say(f"created CA {args.name!r}: {ca.cert_path} (its key {Path(args.dir) / 'ca.key'}: {where})")
    return 0


def issue(args: argparse.Namespace) -> int:
    ca_files = [Path(args.dir) / "ca.crt", Path(args.dir) / "ca.key"]
    out = check_writable(args.out, args.force, inputs=(args.csr, *ca_files))
    ca = FileCA.open(args.dir, args.tcti)
    try:
        csr = load_pem_csr(read_input(args.csr, "CSR"))
    except ValueError as e:
        raise UsageError(f"{args.csr}: not a PEM CSR ({e})") from None
    try:
        cert = ca.issue(csr, server=args.server, sans=args.san)
    except UsageError as e:
        raise UsageError(f"{args.csr}: {e}") from None
    write_atomic(out, cert.public_bytes(Encoding.PEM), 0o644)
    role = "server" if args.server else "client"
    emit(args, _certificate_data(cert, out, role),
         [f"issued {role} certificate for {cert.subject.rfc4514_string()} to {out}"])
    return 0


def _certificate_data(cert: x509.Certificate, out: Path, role: str) -> dict[str, object]:
    from cryptography.hazmat.primitives import hashes

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [f"DNS:{n}" for n in san.get_values_for_type(x509.DNSName)] + \
                [f"IP:{a}" for a in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names = []
    return {"out": str(out), "role": role, "subject": cert.subject.rfc4514_string(),
            "issuer": cert.issuer.rfc4514_string(), "serial": format(cert.serial_number, "x"), "san": names,
            "not_before": cert.not_valid_before_utc.isoformat(), "not_after": cert.not_valid_after_utc.isoformat(),
            "sha256": cert.fingerprint(hashes.SHA256()).hex()}


__all__ = ["add_parser"]
