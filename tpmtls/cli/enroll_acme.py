"""`tpmtls enroll --acme …`, `tpmtls enroll policy` and `tpmtls enroll-server` (attested enrollment)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ._common import add_tcti, say


def add_acme_options(parser: argparse.ArgumentParser) -> None:
    """The options `run_acme` reads; another `enroll` parser can add them the same way."""
    parser.add_argument("--acme", metavar="DIRECTORY_URL", help="ACME directory URL (device-attest-01)")
    parser.add_argument("--id", metavar="PERMANENT_ID", default="ek",
                        help="permanent identifier to enroll (default 'ek': this TPM's urn:ek:sha256 identifier)")
    parser.add_argument("--cafile", metavar="CA", help="trust anchor for the ACME and Attestation CA servers' TLS "
                                                       "(default: the system's)")
    parser.add_argument("--attestation-ca", metavar="URL", help="Attestation CA base URL (default: the ACME server's)")
    parser.add_argument("--key-out", metavar="FILE", default="client.key", help="TPM key file to write (client.key)")
    parser.add_argument("--cert-out", metavar="FILE", default="client.cert", help="certificate chain to write")
    parser.add_argument("--install", metavar="HOST[:PORT]",
                        help="also install key and certificate in tpmtls's certs.d/HOST[:PORT] "
                             "($TPMTLS_CERTS_D or /etc/tpmtls/certs.d), where tpmtls-push/pull look")
    parser.add_argument("--renew", action="store_true", help="re-attest the existing --key-out key and replace "
                                                              "--cert-out (no new key)")
    parser.add_argument("--alg", default="ecc-p256", choices=("ecc-p256", "ecc-p384", "rsa2048", "rsa3072"),
                        help="algorithm of the new TLS key (default ecc-p256)")
    parser.add_argument("--ek", default="rsa", choices=("rsa", "ecc"), help="which EK to attest with (default rsa)")
    parser.add_argument("--force", action="store_true", help="replace existing --key-out/--cert-out files")


def add_policy_options(parser: argparse.ArgumentParser) -> None:
    """`tpmtls enroll policy`'s options, on an `enroll` parser that has add_acme_options' --force."""
    parser.add_argument("--pcrs", default="sha256:0,1,2,3,4,5,6,7", metavar="BANK:N,…",
                        help="with 'policy': PCRs to record (default sha256:0,1,2,3,4,5,6,7)")
    parser.add_argument("--out", metavar="FILE", help="with 'policy': the policy JSON to write")


def add_policy_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("policy", help="record this machine's PCR values as an enroll-server policy")
    p.add_argument("--pcrs", default="sha256:0,1,2,3,4,5,6,7", metavar="BANK:N,…",
                   help="PCRs to record (default sha256:0,1,2,3,4,5,6,7)")
    p.add_argument("--out", required=True, metavar="FILE", help="policy JSON to write")
    p.add_argument("--force", action="store_true", help="replace FILE if it exists")
    add_tcti(p)
    p.set_defaults(func=run_policy)


def add_server_state_options(p: argparse.ArgumentParser) -> None:
    """enroll-server's database, public name, EK hygiene and certificate lifetime."""
    p.add_argument("--db", metavar="URL", help="state database: sqlite:PATH (default sqlite:enroll.db in the CA "
                                               "directory) or postgresql://USER@HOST/DB for several instances")
    p.add_argument("--public-url", metavar="https://NAME:PORT",
                   help="the URL clients reach this server by: its ACME URLs and its certificate's name "
                        "(required with a wildcard --listen such as 0.0.0.0:8443)")
    p.add_argument("--ek-deny", metavar="FILE", help="EK identifiers (urn:ek:sha256:…) to refuse, one per line; "
                                                    "re-read when it changes")
    p.add_argument("--ek-crls", metavar="FILE", help="TPM makers' CRLs (PEM); EK certificates they revoke are refused")
    p.add_argument("--cert-hours", type=float, default=24.0, metavar="H",
                   help="lifetime of the client certificates issued (default 24)")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`enroll-server` always; `enroll` (with `policy`) only if no other module registered one."""
    p = sub.add_parser("enroll-server", help="Attestation CA + ACME device-attest-01 server issuing from a file CA")
    p.add_argument("--ca", required=True, metavar="DIR", help="file CA directory ('tpmtls ca init')")
    p.add_argument("--ek-roots", required=True, metavar="BUNDLE", help="PEM bundle of the TPM makers' EK CAs you trust")
    p.add_argument("--policy", required=True, metavar="FILE", help="PCR policy ('tpmtls enroll policy')")
    p.add_argument("--listen", default="127.0.0.1:8443", metavar="ADDR:PORT",
                   help="where to listen (default 127.0.0.1:8443; port 0 picks a free one)")
    p.add_argument("--attestation-roots", metavar="BUNDLE",
                   help="CAs whose AK certificates the ACME side accepts (default: this server's Attestation CA)")
    add_server_state_options(p)
    p.set_defaults(func=run_server)
    if "enroll" in sub.choices:
        return
    e = sub.add_parser("enroll", help="get a client certificate for a TPM key by attestation (ACME device-attest-01)")
    add_acme_options(e)
    add_tcti(e)
    esub = e.add_subparsers(dest="enroll_command", required=False, metavar="{policy}")
    add_policy_command(esub)
    e.set_defaults(func=run_enroll)


def run_enroll(args: argparse.Namespace) -> int:
    if not getattr(args, "acme", None):
        raise UsageError("enroll: give --acme DIRECTORY_URL (or use 'tpmtls enroll policy')")
    return run_acme(args)


def _attr(args: argparse.Namespace, name: str, default: Any) -> Any:
    value = getattr(args, name, default)
    return default if value is None else value


def run_acme(args: argparse.Namespace) -> int:
    """`tpmtls enroll --acme URL --id ID …`: attest, enroll, write key and certificate."""
    from tpm2_pytss.constants import TPMA_OBJECT

    from .. import connect
    from ..enroll.acme_client import EnrollOptions, enroll

    url = args.acme
    if not url.startswith("https://"):
        raise UsageError(f"--acme {url!r}: the ACME directory must be an https:// URL")
    cafile = getattr(args, "cafile", None)
    if cafile and not Path(cafile).is_file():
        raise UsageError(f"--cafile {cafile}: no such file")
    options = EnrollOptions(
        directory_url=url, identifier=_attr(args, "id", "ek"), cafile=cafile,
        attestation_ca=getattr(args, "attestation_ca", None), key_out=Path(_attr(args, "key_out", "client.key")),
        cert_out=Path(_attr(args, "cert_out", "client.cert")), install=getattr(args, "install", None),
        renew=bool(getattr(args, "renew", False)), alg=_attr(args, "alg", "ecc-p256"), ek=_attr(args, "ek", "rsa"),
        overwrite=bool(getattr(args, "force", False)),
    )
    result = enroll(connect(getattr(args, "tcti", None)), options)
    attrs = TPMA_OBJECT(result.key.tpm_public.publicArea.objectAttributes)
    fixed = "fixedTPM|fixedParent" if attrs & TPMA_OBJECT.FIXEDTPM and attrs & TPMA_OBJECT.FIXEDPARENT else str(attrs)
    verb = "renewed" if options.renew else "enrolled"
    say(f"{verb} {result.identifier}: key {result.key_path} ({result.key.algorithm}, created in the TPM, {fixed}); "
        f"certificate {result.cert_path} valid until {result.certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    if result.installed is not None:
        say(f"installed client.key and client.cert in {result.installed}")
    return 0


def run_policy(args: argparse.Namespace) -> int:
    """`tpmtls enroll policy`: this machine's current PCR values as the allowed ones."""
    from .. import connect
    from .._files import check_writable, write_atomic
    from ..enroll.attest_policy import PcrPolicy, parse_selection
    from ..tpm.attest import read_pcrs

    selection = parse_selection(args.pcrs)
    out = check_writable(args.out, args.force)
    policy = PcrPolicy.from_values(read_pcrs(connect(args.tcti), selection))
    write_atomic(out, policy.to_json(), 0o644)
    count = sum(len(p) for p in selection.values())
    say(f"recorded {count} PCR values ({args.pcrs}) in {out}")
    return 0


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"--listen {text!r}: write it as ADDRESS:PORT, e.g. 127.0.0.1:8443")
    return host, int(port)


def run_server(args: argparse.Namespace) -> int:
    """`tpmtls enroll-server`: serve until SIGTERM/SIGINT; one line per refusal on stderr."""
    from ..enroll.acme_server import EnrollApp, EnrollServer, Settings

    host, port = _listen(args.listen)
    if not 0 < args.cert_hours <= 24 * 825:
        raise UsageError(f"--cert-hours {args.cert_hours:g}: give a lifetime between a few minutes and 825 days")
    app = EnrollApp(args.ca, args.ek_roots, args.policy, attestation_roots=args.attestation_roots, db=args.db,
                    settings=Settings(cert_hours=args.cert_hours), ek_deny=args.ek_deny, ek_crls=args.ek_crls)
    try:
        server = EnrollServer(app, host, port, public_url=args.public_url)
        say(f"tpmtls enroll-server: ACME directory {server.directory_url}; Attestation CA {server.url}/attest; "
            f"issuing from {args.ca}; state in {app.store.url}")
        sys.stdout.flush()
        try:
            server.serve_forever()
        finally:
            server.stop()
    finally:
        app.close()
    return 0


__all__ = ["add_acme_options", "add_policy_command", "register", "run_acme", "run_policy", "run_server"]
