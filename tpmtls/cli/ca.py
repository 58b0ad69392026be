"""`tpmtls ca init|issue|revoke|crl`: a small file CA (for one machine, tests and the quickstart),
its revocations and CRLs (docs/revocation.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from .._files import check_writable, read_input, write_atomic
from ..errors import UsageError
from ..pki.ca import FileCA
from ..pki.csr import load_pem_csr
from ..pki.revocation import REASONS
from ..tpm import connect
from ._common import add_format, add_tcti, emit, say

DEFAULT_CRL_HOURS = 168.0  # a week: a daily timer leaves six days to notice a failure before fronts refuse everyone

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

    p = csub.add_parser("revoke", help="revoke a certificate this CA issued (recorded in DIR/revoked.json; "
                                       "'ca crl' publishes it, enroll-server refuses to renew its key)")
    p.add_argument("dir", metavar="DIR")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--serial", metavar="S", help="its serial number in hex (as 'openssl x509 -noout -serial' "
                                                     "prints it; DIR/issued/<serial>.pem)")
    which.add_argument("--cert", metavar="F", help="the certificate itself (PEM)")
    p.add_argument("--reason", default="unspecified", metavar="R",
                   help=f"RFC 5280 reason: {', '.join(REASONS)} (default unspecified)")
    p.set_defaults(func=revoke)

    p = csub.add_parser("crl", help="sign a CRL of every revocation, for fronts that check one (NGINX ssl_crl)")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--out", required=True, metavar="CRL", help="the CRL to write (PEM)")
    p.add_argument("--hours", type=float, default=DEFAULT_CRL_HOURS, metavar="H",
                   help=f"until its next update (default {DEFAULT_CRL_HOURS:g}: a week); re-sign well before")
    p.add_argument("--daemon", action="store_true", help="keep running: re-sign at half of --hours and within "
                                                         "seconds of each revocation")
    p.add_argument("--force", action="store_true", help="replace CRL if it exists")
    add_tcti(p)
    p.set_defaults(func=crl)


def init(args: argparse.Namespace) -> int:
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


def revoke(args: argparse.Namespace) -> int:
    ca = FileCA.open(args.dir, getattr(args, "tcti", None))
    cert = None
    if args.cert:
        try:
            cert = x509.load_pem_x509_certificate(read_input(args.cert, "certificate"))
        except ValueError:
            raise UsageError(f"{args.cert}: not a PEM certificate") from None
    try:
        entry, new = ca.revoke(serial=args.serial, cert=cert, reason=args.reason)
    except UsageError as e:
        raise UsageError(f"{args.cert}: {e}" if args.cert else str(e)) from None
    what = f"{entry.serial} ({entry.subject})" if entry.subject else entry.serial
    if not new:
        say(f"{what} was already revoked on {entry.revoked_at} ({entry.reason})")
        return 0
    known = "" if entry.subject else f"; no DIR/issued/{entry.serial}.pem: not a certificate this CA kept"
    say(f"revoked {what}: {entry.reason}{known}; publish it with 'tpmtls ca crl {args.dir} --out CRL --force' "
        "(and reload the front that reads the CRL)")
    if entry.subject.startswith("CN=urn:ek:"):
        say(f"to refuse that machine new certificates too, add its EK to enroll-server's --ek-deny file: "
            f"{entry.subject[3:]}")
    return 0


def crl(args: argparse.Namespace) -> int:
    import datetime
    import logging

    from ..pki.crl import CrlKeeper, write_crl
    from ._common import serve_until_signal

    if not 0 < args.hours <= 24 * 366:
        raise UsageError(f"--hours {args.hours:g}: give a lifetime between a few minutes and a year")
    out = check_writable(args.out, args.force, inputs=(Path(args.dir) / "ca.key", Path(args.dir) / "ca.crt"))
    ca = FileCA.open(args.dir, getattr(args, "tcti", None))
    lifetime = datetime.timedelta(hours=args.hours)
    if args.daemon:
        serve_until_signal(CrlKeeper(ca, out, lifetime, log=logging.getLogger("tpmtls.ca").info))
        return 0
    signed = write_crl(ca, out, lifetime)
    say(f"wrote {out}: {len(signed)} revoked, next update {signed.next_update_utc:%Y-%m-%d %H:%M} UTC; reload the "
        "front that reads it (nginx -s reload)")
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
