"""`tpmtls daemon-proxy`: the stock docker CLI through a local socket, TPM-backed mTLS upstream."""

from __future__ import annotations

import argparse
import logging
import os

from ._common import add_password_file, add_tcti, key_password, serve_until_signal

DEFAULT_LISTEN = "unix:///run/tpmtls/docker.sock"


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("daemon-proxy", help="a local Docker API socket for the stock docker CLI, "
                                            "forwarded over TPM-backed mTLS to a TLS dockerd")
    p.add_argument("--upstream", metavar="tcp://HOST:2376",
                   help="the TLS daemon (or its NGINX front); default: $DOCKER_HOST")
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="unix:///PATH|tcp://127.0.0.1:PORT|fd://",
                   help=f"where the CLI connects (default {DEFAULT_LISTEN}; mode 0660; loopback TCP only); "
                   "fd://: the socket systemd passes (tpmtls-daemon-proxy@.socket)")
    p.add_argument("--cert-path", metavar="D",
                   help="ca.pem, cert.pem, key.pem (the TPM key file); default $DOCKER_CERT_PATH or ~/.docker")
    add_password_file(p)
    add_tcti(p)
    p.set_defaults(func=run, long_running=True)


_log = logging.getLogger("tpmtls.daemon_proxy")


def run(args: argparse.Namespace) -> int:
    from .._systemd import notify
    from ..docker.files import default_cert_path
    from ..docker.proxy import DaemonProxy
    from ..errors import UsageError

    upstream = args.upstream or os.environ.get("DOCKER_HOST")
    if not upstream:
        raise UsageError("no upstream daemon: pass --upstream tcp://HOST:2376 (or set DOCKER_HOST)")
    cert_path = default_cert_path(args.cert_path)
    password = key_password(str(cert_path.key), args.password_file) if cert_path.key.is_file() else None
    proxy = DaemonProxy(upstream, args.listen, cert_path, tcti=args.tcti, password=password, log=_log.info)
    proxy.bind()  # what is local first: the address taken, or not ours to use
    try:
        proxy.probe()  # then, with one line, if the daemon, its CA or our certificate is wrong
    except BaseException:
        proxy.close()
        raise
    if not proxy.half_close:
        _log.warning("the upstream is not dockerd itself (NGINX?): the end of a client's stdin is not forwarded, "
                     "since NGINX would end the whole stream and lose its output")

    _log.info(f"listening on {proxy.bound}, forwarding to {proxy.upstream} as {proxy.cert_path.cert} "
              f"(TPM signatures so far: {proxy.signatures()}); use DOCKER_HOST={proxy.bound}")
    notify("READY=1", f"STATUS=serving {proxy.bound} for {proxy.upstream}; the daemon answered with our certificate")
    serve_until_signal(proxy)
    n = proxy.stats.connections
    _log.info(f"stopped after {n} connection{'' if n == 1 else 's'} ({proxy.stats.resumed} resumed, "
              f"{proxy.stats.full_handshakes} full handshakes incl. the start-up check, {proxy.stats.failures} "
              f"refused); TPM signatures: {proxy.signatures()}")
    return 0


__all__ = ["add_parser"]
