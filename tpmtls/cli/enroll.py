"""`tpmtls enroll`: a certificate for a key in this TPM, by either scheme (docs/pairing.md,
docs/enrollment.md), and the PCR policy the attested scheme checks.

    tpmtls enroll HOST[:PORT] --store DIR (--expect-fingerprint SHA256 | --trust-on-first-use)   pairing
    tpmtls enroll --acme URL [--id ID] [--install HOST[:PORT]] …          attested: ACME device-attest-01
    tpmtls enroll --renew (--cert-out FILE | --store DIR) [--if-due | --daemon]   renewal (docs/renewal.md)
    tpmtls enroll policy --out FILE [--pcrs BANK:N,…]                       this machine's PCRs, for enroll-server

`policy` is a subcommand; any other first word is the agent's HOST[:PORT]. A daemon that
really is called "policy" is enrolled with its port: `tpmtls enroll policy:2376 --store DIR`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from .._files import check_writable, write_atomic
from ..errors import UsageError
from ..tpm import connect
from ._common import add_format, add_tcti, emit, say

if TYPE_CHECKING:
    from ..enroll.acme_client import EnrollOptions

POLICY_ESCAPE = "a daemon called 'policy' is enrolled with its port: tpmtls enroll policy:2376 --store DIR"


class _AnyWord:
    """The choices of a positional that takes its subcommands' names and any other word too."""

    def __init__(self, names: dict[str, argparse.ArgumentParser]) -> None:
        self.names = names

    def __contains__(self, word: object) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)


class _HostOrSubcommand(argparse._SubParsersAction):  # type: ignore[type-arg]
    """`enroll`'s first word: a subcommand it has (policy), else the agent's HOST[:PORT], which
    `enroll`'s own options may follow (argparse hands this action everything after the word)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # argparse checks the word against `choices` before this action sees it
        self.choices = _AnyWord(self._name_parser_map)  # type: ignore[assignment]

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Sequence[Any] | str | None, option_string: str | None = None) -> None:
        assert isinstance(values, list) and values
        word, rest = values[0], values[1:]
        extra: list[str] = []
        if getattr(namespace, "host", None) is not None:
            extra.append(word)  # a second word after HOST: argparse reports it
        elif word in self._name_parser_map:
            super().__call__(parser, namespace, values, option_string)
            return
        else:
            namespace.host = word
        _, unknown = parser.parse_known_args(rest, namespace)
        if extra + unknown:  # kept for the top-level parser to report, as argparse does for subcommands
            vars(namespace).setdefault(argparse._UNRECOGNIZED_ARGS_ATTR, []).extend(extra + unknown)


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`tpmtls enroll` with both schemes' options, and its `policy` subcommand."""
    p = sub.add_parser("enroll", help="client side of pairing (HOST[:PORT] --store DIR), ACME (--acme URL), "
                                      "or 'enroll policy --out FILE' (this machine's PCRs, for enroll-server)",
                       usage="%(prog)s HOST[:PORT] --store DIR (--expect-fingerprint SHA256 | --trust-on-first-use) "
                             "[--tcti TCTI]\n"
                             "       %(prog)s --acme DIRECTORY_URL [--id PERMANENT_ID] [--install HOST[:PORT]] [--renew] … "
                             "[--tcti TCTI]\n"
                             "       %(prog)s --renew (--cert-out FILE | --store DIR) [--if-due | --daemon] [--tcti TCTI]\n"
                             "       %(prog)s policy --out FILE [--pcrs BANK:N,…] [--force] [--tcti TCTI]",
                       epilog=f"{POLICY_ESCAPE}.")
    p.add_argument("--store", metavar="DIR", help="pairing: certificate store: CA, TPM client key, one directory "
                                                  "per server")
    p.add_argument("--expect-fingerprint", metavar="SHA256",
                   help="pairing: the agent's key fingerprint as it printed it (checked before anything is sent)")
    p.add_argument("--trust-on-first-use", action="store_true",
                   help="pairing without --expect-fingerprint: trust whatever key answers, and remember it; a man "
                        "in the middle on this first contact would be trusted")
    p.add_argument("--acme", metavar="DIRECTORY_URL", help="ACME directory URL (device-attest-01)")
    p.add_argument("--id", metavar="PERMANENT_ID", default="ek",
                   help="permanent identifier to enroll (default 'ek': this TPM's urn:ek:sha256 identifier)")
    p.add_argument("--cafile", metavar="CA", help="trust anchor for the ACME and Attestation CA servers' TLS "
                                                  "(default: the system's)")
    p.add_argument("--attestation-ca", metavar="URL", help="Attestation CA base URL (default: the ACME server's)")
    p.add_argument("--key-out", metavar="FILE", default="client.key", help="TPM key file to write (client.key)")
    p.add_argument("--cert-out", metavar="FILE", default="client.cert", help="certificate chain to write")
    p.add_argument("--install", metavar="HOST[:PORT]",
                   help="also install key and certificate in tpmtls's certs.d/HOST[:PORT] "
                        "($TPMTLS_CERTS_D or /etc/tpmtls/certs.d), where tpmtls-push/pull look")
    p.add_argument("--renew", action="store_true",
                   help="renew: re-attest the existing key of --cert-out (as its renewal record says, or with --acme …) "
                        "and refresh every installed copy; with --store, the pairing store's client certificate")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--if-due", action="store_true", help="with --renew: only once 2/3 of the certificate's life "
                                                            "has passed (for a timer: helpers/tpmtls-renew@.timer)")
    when.add_argument("--daemon", action="store_true", help="with --renew: keep running, renewing at 2/3 of each "
                                                            "certificate's life (with jitter; backoff after failures)")
    p.add_argument("--alg", default="ecc-p256", choices=("ecc-p256", "ecc-p384", "rsa2048", "rsa3072"),
                   help="algorithm of the new TLS key (default ecc-p256)")
    p.add_argument("--ek", default="rsa", choices=("rsa", "ecc"), help="which EK to attest with (default rsa)")
    p.add_argument("--force", action="store_true", help="replace existing --key-out/--cert-out files")
    add_tcti(p)
    add_format(p)
    p.set_defaults(func=run, host=None)
    words = p.add_subparsers(action=_HostOrSubcommand, dest="enroll_command", required=False, prog=p.prog,
                             metavar="HOST[:PORT] | policy",
                             help="the enroll-agent (default port 2376), or the subcommand 'policy'")

    q = words.add_parser("policy", help="record this machine's PCR values as an enroll-server policy",
                         epilog=f"{POLICY_ESCAPE}.")
    q.add_argument("--pcrs", default="sha256:0,1,2,3,4,5,6,7", metavar="BANK:N,…",
                   help="PCRs to record (default sha256:0,1,2,3,4,5,6,7)")
    q.add_argument("--out", required=True, metavar="FILE", help="policy JSON to write")
    # SUPPRESS: what `enroll` itself was given before the word `policy` is kept
    q.add_argument("--force", action="store_true", default=argparse.SUPPRESS, help="replace FILE if it exists")
    q.add_argument("--store", default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # to say how to enroll "policy:2376"
    add_tcti(q)
    q.set_defaults(func=run_policy)


def run(args: argparse.Namespace) -> int:
    """Attested with --acme, else pairing with HOST[:PORT] --store DIR; --renew renews either."""
    if (args.if_due or args.daemon) and not args.renew:
        raise UsageError("--if-due and --daemon go with --renew")
    if args.renew and (args.store or not args.acme or args.if_due or args.daemon):
        return run_renew(args)
    if args.acme:
        return run_acme(args)
    if not args.host or not args.store:
        raise UsageError("enroll needs HOST[:PORT] --store DIR (pairing) or --acme URL")
    return run_pairing(args)


def run_pairing(args: argparse.Namespace) -> int:
    """`tpmtls enroll HOST[:PORT] --store DIR`: have the agent's daemon serve a certificate from our CA."""
    from ..enroll.pairing_client import ensure_server_enrolled

    if args.expect_fingerprint and args.trust_on_first_use:
        raise UsageError("--expect-fingerprint and --trust-on-first-use: give one (the fingerprint is checked; "
                         "trust on first use takes any key)")

    def first_use(fingerprint: str) -> None:
        if args.format == "text":
            say(f"trust on first use: the agent's key SHA-256 is {fingerprint}; compare it with the fingerprint "
                "enroll-agent printed (--expect-fingerprint checks it before anything is sent)")

    done = ensure_server_enrolled(args.store, args.host, expect_fingerprint=args.expect_fingerprint,
                                  trust_on_first_use=args.trust_on_first_use, tcti=args.tcti, on_first_use=first_use)
    data = {"scheme": "pairing", "host": done.host, "port": done.port, "changed": done.changed,
            "fingerprint": done.fingerprint, "trust": done.trust, "docker_host": done.base_url,
            "docker_cert_path": str(done.cert_path)}
    if not done.changed:
        emit(args, data, [f"{done.host}:{done.port} is already enrolled; DOCKER_CERT_PATH={done.cert_path}"])
        return 0
    emit(args, data, [f"enrolled {done.host}:{done.port} (agent key SHA-256 {done.fingerprint}, {done.trust}); "
                      "dockerd starts there now",
                      f"DOCKER_HOST={done.base_url} DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH={done.cert_path}"])
    return 0


def run_renew(args: argparse.Namespace) -> int:
    """`tpmtls enroll --renew …`: now, `--if-due`, or as a `--daemon` (docs/renewal.md)."""
    import logging

    from ..enroll.renewal import RenewalDaemon, RenewalTiming, load_certificate
    from ._common import serve_until_signal

    if args.store and args.host:
        raise UsageError("--renew --store DIR renews the store's client certificate; it takes no HOST")
    if args.store:
        from ..enroll.store import CertificateStore

        store = CertificateStore(args.store)
        cert = store.client_cert
        renew_now: Callable[[], Any] = store.renew_client
    else:
        cert = Path(args.cert_out)
        renew_now = _acme_renewal(args)
    if args.daemon:
        serve_until_signal(RenewalDaemon(cert, renew_now, log=logging.getLogger("tpmtls.enroll").info))
        return 0
    if args.if_due:
        current = load_certificate(cert)
        due = RenewalTiming().due(current) if current is not None else 0.0
        if time.time() < due:
            say(f"{cert}: not due; renewal at {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(due))} UTC")
            return 0
    new = renew_now()
    say(f"renewed {cert}: valid until {new.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC")
    return 0


def _acme_renewal(args: argparse.Namespace) -> Callable[[], Any]:
    """The same key re-attested: as given on the command line (--acme …), else as the renewal record says."""
    from ..enroll.acme_client import enroll, renew

    tpm = connect(args.tcti)
    if not args.acme:
        return lambda: renew(args.cert_out, tpm)
    options = _acme_options(args)
    options.renew = True
    return lambda: enroll(tpm, options).certificate


def run_acme(args: argparse.Namespace) -> int:
    """`tpmtls enroll --acme URL --id ID …`: attest, enroll, write key and certificate."""
    from tpm2_pytss.constants import TPMA_OBJECT

    from ..enroll.acme_client import enroll

    options = _acme_options(args)
    result = enroll(connect(args.tcti), options)
    attrs = TPMA_OBJECT(result.key.tpm_public.publicArea.objectAttributes)
    fixed = "fixedTPM|fixedParent" if attrs & TPMA_OBJECT.FIXEDTPM and attrs & TPMA_OBJECT.FIXEDPARENT else str(attrs)
    verb = "renewed" if options.renew else "enrolled"
    cert = result.certificate
    lines = [f"{verb} {result.identifier}: key {result.key_path} ({result.key.algorithm}, created in the TPM, {fixed}); "
             f"certificate {result.cert_path} valid until {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"]
    if result.installed is not None:
        lines.append(f"installed client.key and client.cert in {result.installed}")
    emit(args, {"scheme": "acme", "renewed": bool(options.renew), "identifier": result.identifier,
                "key": str(result.key_path), "algorithm": result.key.algorithm, "certificate": str(result.cert_path),
                "subject": cert.subject.rfc4514_string(), "issuer": cert.issuer.rfc4514_string(),
                "serial": format(cert.serial_number, "x"), "not_before": cert.not_valid_before_utc.isoformat(),
                "not_after": cert.not_valid_after_utc.isoformat(),
                "installed": None if result.installed is None else str(result.installed)}, lines)
    return 0


def _acme_options(args: argparse.Namespace) -> EnrollOptions:
    from ..enroll.acme_client import EnrollOptions

    url = args.acme
    if not url.startswith("https://"):
        raise UsageError(f"--acme {url!r}: the ACME directory must be an https:// URL")
    if args.cafile and not Path(args.cafile).is_file():
        raise UsageError(f"--cafile {args.cafile}: no such file")
    return EnrollOptions(
        directory_url=url, identifier=args.id, cafile=args.cafile, attestation_ca=args.attestation_ca,
        key_out=Path(args.key_out), cert_out=Path(args.cert_out), install=args.install, renew=args.renew,
        alg=args.alg, ek=args.ek, overwrite=args.force,
    )


def run_policy(args: argparse.Namespace) -> int:
    """`tpmtls enroll policy`: this machine's current PCR values as the allowed ones."""
    from ..enroll.attest_policy import PcrPolicy, parse_selection
    from ..tpm.attest import read_pcrs

    if args.store is not None:
        raise UsageError(f"enroll policy records this machine's PCR values and takes no --store; {POLICY_ESCAPE}")
    selection = parse_selection(args.pcrs)
    out = check_writable(args.out, args.force)
    policy = PcrPolicy.from_values(read_pcrs(connect(args.tcti), selection))
    write_atomic(out, policy.to_json(), 0o644)
    count = sum(len(p) for p in selection.values())
    say(f"recorded {count} PCR values ({args.pcrs}) in {out}")
    return 0


__all__ = ["add_parser"]
