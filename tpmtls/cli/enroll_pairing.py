"""`tpmtls enroll-agent` and `tpmtls enroll HOST[:PORT] --store DIR` (docs/pairing.md).

`tpmtls enroll --acme URL` is the attested scheme: it is handed to
`tpmtls.cli.enroll_acme.run_acme(args)` when that module is installed, and that module's
`add_enroll_arguments(parser)`, if it has one, adds its options to `enroll`.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util

from ..errors import UsageError
from ._common import add_tcti, say


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("enroll-agent", help="server side of pairing: wait for a certificate on the daemon's TLS "
                                            "port, then exec dockerd on the same socket")
    p.add_argument("--ca", required=True, metavar="CA", help="CA certificate: clients and the server certificate "
                                                             "must come from it (dockerd's --tlscacert too)")
    p.add_argument("--state", required=True, metavar="DIR", help="where server.key (0600), pairing.crt and "
                                                                 "server.crt live")
    p.add_argument("--dockerd-arg", action="append", default=[], metavar="ARG",
                   help="extra dockerd argument, repeatable; write --dockerd-arg=--data-root=/x for flags")
    p.add_argument("--dockerd", default="dockerd", metavar="PATH", help="dockerd binary (default: from PATH)")
    p.add_argument("--san", action="append", default=[], metavar="DNS:h,IP:a",
                   help="names the server certificate must carry (default: the name or address the client used)")
    p.add_argument("--listen", metavar="ADDRESS:PORT",
                   help="without systemd socket activation (LISTEN_FDS): listen here (fd 3, as systemd would)")
    p.set_defaults(func=run_agent)

    p = sub.add_parser("enroll", help="client side of pairing (HOST[:PORT] --store DIR), ACME (--acme URL), "
                                      "or 'enroll policy --out FILE' (this machine's PCRs, for enroll-server)")
    p.add_argument("host", nargs="?", metavar="HOST[:PORT] | policy",
                   help="the enroll-agent (default port 2376); 'policy' records this machine's PCR values")
    p.add_argument("--store", metavar="DIR", help="certificate store: CA, TPM client key, one directory per server")
    p.add_argument("--expect-fingerprint", metavar="SHA256",
                   help="the agent's key fingerprint as it printed it; without it: trust on first use")
    add_tcti(p)
    p.set_defaults(func=run_enroll)
    acme = _acme_cli()
    if acme is not None:  # the attested scheme's options on the same command (docs/cli.md: one `enroll`)
        acme.add_acme_options(p)  # type: ignore[attr-defined]
        acme.add_policy_options(p)  # type: ignore[attr-defined]
    else:
        p.add_argument("--acme", metavar="URL", help="enroll through an ACME server (device-attest-01) instead")


def _acme_cli() -> object | None:
    """tpmtls.cli.enroll_acme when this tpmtls has it (the attested scheme, docs/enrollment.md)."""
    if importlib.util.find_spec("tpmtls.cli.enroll_acme") is None:
        return None
    return importlib.import_module("tpmtls.cli.enroll_acme")


def run_agent(args: argparse.Namespace) -> int:
    from ..enroll.pairing_agent import run_agent as agent

    agent(args.ca, args.state, args.dockerd_arg, dockerd=args.dockerd, sans=args.san, listen=args.listen)
    return 0  # not reached: the agent becomes dockerd


def run_enroll(args: argparse.Namespace) -> int:
    if args.host == "policy" and not args.store:
        acme = _acme_cli()
        if acme is None:
            raise UsageError("'enroll policy' needs the attested-enrollment module (tpmtls.cli.enroll_acme)")
        if not getattr(args, "out", None):
            raise UsageError("enroll policy: give --out FILE for the policy JSON")
        return int(acme.run_policy(args))  # type: ignore[attr-defined]
    if args.acme:
        acme = _acme_cli()
        if acme is None:
            raise UsageError("ACME enrollment is not available in this tpmtls (no tpmtls.cli.enroll_acme)")
        return int(acme.run_acme(args))  # type: ignore[attr-defined]
    if not args.host or not args.store:
        raise UsageError("enroll needs HOST[:PORT] --store DIR (pairing) or --acme URL")
    from ..enroll.pairing_client import ensure_server_enrolled

    def first_use(fingerprint: str) -> None:
        say(f"trust on first use: the agent's key SHA-256 is {fingerprint}; recorded in the store. Compare it "
            "with the fingerprint enroll-agent printed (--expect-fingerprint checks it before anything is sent)")

    done = ensure_server_enrolled(args.store, args.host, expect_fingerprint=args.expect_fingerprint,
                                  tcti=args.tcti, on_first_use=first_use)
    if not done.changed:
        say(f"{done.host}:{done.port} is already enrolled; DOCKER_CERT_PATH={done.cert_path}")
        return 0
    say(f"enrolled {done.host}:{done.port} (agent key SHA-256 {done.fingerprint}, {done.trust}); dockerd starts there now")
    say(f"DOCKER_HOST={done.base_url} DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH={done.cert_path}")
    return 0
