"""`tpmtls proxy`: the registry API on loopback for a stock docker, TPM-backed mTLS upstream."""

from __future__ import annotations

import argparse

from ._common import add_tcti, serve_until_signal, service_log
from ._registry_args import add_certs_args

DEFAULT_LISTEN = "127.0.0.1:5000"


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("proxy", help="the registry API on loopback for a stock docker, forwarded over "
                                     "TPM-backed mTLS to the real registry")
    p.add_argument("--upstream", required=True, metavar="HOST[:PORT]", help="the registry (https; port 443 by default)")
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="127.0.0.1:PORT",
                   help=f"where docker connects (default {DEFAULT_LISTEN}; loopback only: 127.0.0.0/8 or [::1])")
    add_certs_args(p)
    add_tcti(p)
    p.set_defaults(func=run)


_log = service_log("proxy")


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

    _log(f"listening on http://{proxy.bound}, forwarding to https://{proxy.upstream} as {proxy.client_cert}; "
         f"{checked}; use docker pull {proxy.bound}/IMAGE")
    serve_until_signal(proxy)
    s = proxy.status()
    _log(f"stopped after {s['requests']} requests, {s['upstream_handshakes']} upstream handshakes, "
         f"{s['tpm_signatures']} TPM signatures")
    return 0


__all__ = ["add_parser"]
