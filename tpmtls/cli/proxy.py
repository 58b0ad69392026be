"""`tpmtls proxy`: the registry API on loopback for a stock docker, TPM-backed mTLS upstream."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from types import FrameType

from ._common import add_tcti

DEFAULT_LISTEN = "127.0.0.1:5000"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("proxy", help="the registry API on loopback for a stock docker, forwarded over "
                                     "TPM-backed mTLS to the real registry")
    p.add_argument("--upstream", required=True, metavar="HOST[:PORT]", help="the registry (https; port 443 by default)")
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="127.0.0.1:PORT",
                   help=f"where docker connects (default {DEFAULT_LISTEN}; loopback only: 127.0.0.0/8 or [::1])")
    p.add_argument("--cert-dir", metavar="D", help="certs.d-style directory (ca.crt, client.cert, client.key); "
                   "default: tpmtls's certs.d, then Docker's, for HOST:PORT")
    p.add_argument("--certs-root", metavar="DIR", help="tpmtls's certs.d root (default $TPMTLS_CERTS_D or "
                   "/etc/tpmtls/certs.d)")
    p.add_argument("--resolve", action="append", metavar="HOST:PORT:ADDR",
                   help="connect to ADDR for HOST:PORT, like curl (needed when HOST itself is mapped to loopback)")
    add_tcti(p)
    p.set_defaults(func=run)


def _log(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} tpmtls proxy: {line}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from ..errors import TpmtlsError
    from ..registry.client import parse_resolve
    from ..registry.proxy import RegistryProxy

    proxy = RegistryProxy(args.upstream, args.listen, cert_dir=args.cert_dir, certs_root=args.certs_root,
                          resolve=parse_resolve(args.resolve), tcti=args.tcti, log=_log)
    proxy.bind()
    try:
        checked = f"upstream answers {proxy.check()}"
    except TpmtlsError as e:  # the registry may come up later, or the refusal is what the user must see
        checked = f"upstream check failed, requests will get 502 until it works: {e}"

    def _stop(signum: int, frame: FrameType | None) -> None:
        proxy.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    _log(f"listening on http://{proxy.bound}, forwarding to https://{proxy.upstream} as {proxy.client_cert}; "
         f"{checked}; use docker pull {proxy.bound}/IMAGE")
    proxy.serve()
    s = proxy.status()
    _log(f"stopped after {s['requests']} requests, {s['upstream_handshakes']} upstream handshakes, "
         f"{s['tpm_signatures']} TPM signatures")
    return 0


__all__ = ["register"]
