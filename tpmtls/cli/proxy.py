"""`tpmtls proxy`: the registry API on loopback for a stock docker, TPM-backed mTLS upstream."""

from __future__ import annotations

import argparse
import logging

from ._common import add_tcti, serve_until_signal
from ._registry_args import add_certs_args

DEFAULT_LISTEN = "127.0.0.1:5000"


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("proxy", help="the registry API on loopback for a stock docker, forwarded over "
                                     "TPM-backed mTLS to the real registry")
    p.add_argument("--upstream", required=True, metavar="HOST[:PORT]", help="the registry (https; port 443 by default)")
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="127.0.0.1:PORT|fd://",
                   help=f"where docker connects (default {DEFAULT_LISTEN}; loopback only: 127.0.0.0/8 or [::1]); "
                   "fd://: the socket systemd passes (tpmtls-proxy@.socket)")
    add_certs_args(p)
    add_tcti(p)
    p.set_defaults(func=run, long_running=True)


_log = logging.getLogger("tpmtls.proxy")


def run(args: argparse.Namespace) -> int:
    from .._systemd import notify
    from ..errors import TpmtlsError
    from ..registry.proxy import RegistryProxy
    from ..registry.transport import parse_resolve
    from ._registry_args import client_key_password

    proxy = RegistryProxy(args.upstream, args.listen, cert_dir=args.cert_dir, certs_root=args.certs_root,
                          resolve=parse_resolve(args.resolve), tcti=args.tcti, log=_log.info,
                          key_password=client_key_password(args))
    proxy.bind()
    try:
        checked, level, status = f"upstream answers {proxy.check()}", logging.INFO, "upstream answered"
    except TpmtlsError as e:  # the registry may come up later, or the refusal is what the user must see
        checked = f"upstream check failed, requests will get 502 until it works: {e}"
        level, status = logging.WARNING, "upstream check failed: 502 until it answers"

    _log.log(level, f"listening on http://{proxy.bound}, forwarding to https://{proxy.upstream} as "
             f"{proxy.client_cert}; {checked}; use docker pull {proxy.bound}/IMAGE")
    notify("READY=1", f"STATUS=serving http://{proxy.bound} for https://{proxy.upstream}; {status}")
    serve_until_signal(proxy)
    s = proxy.status()
    _log.info(f"stopped after {s['requests']} requests, {s['upstream_handshakes']} upstream handshakes, "
              f"{s['tpm_signatures']} TPM signatures")
    return 0


__all__ = ["add_parser"]
