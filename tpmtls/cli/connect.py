"""`tpmtls connect HOST:PORT`: an s_client-like mTLS check with a TPM key."""

from __future__ import annotations

import argparse
import socket
import ssl
from typing import Any

from .. import provider, ssl_context
from ..errors import HandshakeError, UsageError
from ._common import add_password_file, add_tcti, read_secret_file, say


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("connect", help="TLS handshake with client authentication, like s_client")
    p.add_argument("target", metavar="HOST:PORT")
    p.add_argument("--cert", required=True, metavar="C", help="client certificate (chain) PEM")
    p.add_argument("--key", required=True, metavar="K", help="TPM key file or handle:0x81…")
    p.add_argument("--cafile", required=True, metavar="CA", help="CA certificates that sign the server's")
    version = p.add_mutually_exclusive_group()
    version.add_argument("--tls1.2", dest="tls_version", action="store_const", const="1.2", help="TLS 1.2 only")
    version.add_argument("--tls1.3", dest="tls_version", action="store_const", const="1.3", help="TLS 1.3 only")
    p.add_argument("--servername", metavar="N", help="name to send (SNI) and verify (default: HOST)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S", help="connect/handshake timeout (10 s)")
    add_password_file(p)
    add_tcti(p)
    p.set_defaults(func=run)


def split_target(target: str) -> tuple[str, int]:
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UsageError(f"{target!r}: write the target as HOST:PORT")
    return host.strip("[]"), int(port)


def run(args: argparse.Namespace) -> int:
    host, port = split_target(args.target)
    name = args.servername or host
    ctx = ssl_context(args.cert, args.key, args.cafile, password=read_secret_file(args.password_file),
                      tcti=args.tcti, tls_version=args.tls_version)
    try:
        with socket.create_connection((host, port), timeout=args.timeout) as raw:
            with ctx.wrap_socket(raw, server_hostname=name) as tls:
                _await_verdict(tls)
                peer: dict[str, Any] = dict(tls.getpeercert() or {})
                subject = ",".join(f"{k}={v}" for rdn in peer.get("subject", ()) for k, v in rdn)
                cipher = tls.cipher()
                say(f"connected to {host}:{port} ({name})")
                say(f"protocol: {tls.version()}")
                say(f"cipher: {cipher[0] if cipher else '?'}")
                say(f"client signature: {provider.last_signature_scheme() or 'none (session resumed)'} (in the TPM)")
                say(f"peer: {subject}")
    except ssl.SSLCertVerificationError as e:
        raise HandshakeError(f"{host}:{port}: server certificate not trusted for {name!r}: {e.verify_message}") from None
    except ssl.SSLError as e:
        reason = provider.last_error()
        raise HandshakeError(f"{host}:{port}: handshake failed: {reason or _alert(e)}") from None
    except OSError as e:
        raise HandshakeError(f"{host}:{port}: cannot connect: {e.strerror or e}") from None
    return 0


def _await_verdict(tls: ssl.SSLSocket, seconds: float = 1.0) -> None:
    """In TLS 1.3 the server checks our certificate after our side of the handshake is
    done (RFC 8446, 4.4): read briefly, so a refusal arrives as its alert here. A server
    that accepted sends session tickets or nothing until it is spoken to."""
    tls.settimeout(seconds)
    try:
        tls.recv(1)
    except (socket.timeout, TimeoutError):
        pass


def _alert(e: ssl.SSLError) -> str:
    reason = (e.reason or str(e)).lower().replace("_", " ")
    if "unknown ca" in reason or "certificate required" in reason or "bad certificate" in reason:
        return f"the server refused our client certificate ({reason}): it does not trust the CA that issued it"
    return reason
