"""`tpmtls connect HOST:PORT`: an s_client-like mTLS check with a TPM key."""

from __future__ import annotations

import argparse
import socket
import ssl
from typing import Any

from ..errors import HandshakeError
from ..provider import last_signature_scheme
from ..tls import ssl_context
from ..tls.diagnosis import Cause, diagnose
from ._common import add_format, add_password_file, add_tcti, emit, key_password, seconds, split_target


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("connect", help="TLS handshake with client authentication, like s_client")
    p.add_argument("target", metavar="HOST:PORT")
    p.add_argument("--cert", required=True, metavar="C", help="client certificate (chain) PEM")
    p.add_argument("--key", required=True, metavar="K", help="TPM key file or handle:0x81…")
    p.add_argument("--cafile", required=True, metavar="CA", help="CA certificates that sign the server's")
    version = p.add_mutually_exclusive_group()
    version.add_argument("--tls1.2", dest="tls_version", action="store_const", const="1.2", help="TLS 1.2 only")
    version.add_argument("--tls1.3", dest="tls_version", action="store_const", const="1.3", help="TLS 1.3 only")
    p.add_argument("--servername", metavar="N", help="name to send (SNI) and verify (default: HOST)")
    p.add_argument("--timeout", type=seconds, default=10.0, metavar="S", help="connect/handshake timeout (10 s)")
    add_password_file(p, "file holding the key's password; without it, a key's password is asked for on "
                         "the terminal (like ssh does), and with no terminal the command fails")
    add_tcti(p)
    add_format(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    host, port = split_target(args.target)
    name = args.servername or host
    ctx = ssl_context(args.cert, args.key, args.cafile, password=key_password(args.key, args.password_file),
                      tcti=args.tcti, tls_version=args.tls_version)
    try:
        with socket.create_connection((host, port), timeout=args.timeout) as raw:
            with ctx.wrap_socket(raw, server_hostname=name) as tls:
                _await_verdict(tls)
                peer: dict[str, Any] = dict(tls.getpeercert() or {})
                subject = ",".join(f"{k}={v}" for rdn in peer.get("subject", ()) for k, v in rdn)
                cipher = tls.cipher()
                signature, key_line = _client_signature(args.key, tls)
                data = {"host": host, "port": port, "server_name": name, "protocol": tls.version(),
                        "cipher": cipher[0] if cipher else None, "resumed": tls.session_reused,
                        "client_signature": signature, "peer": subject}
                emit(args, data, [f"connected to {host}:{port} ({name})", f"protocol: {tls.version()}",
                                  f"cipher: {cipher[0] if cipher else '?'}", key_line, f"peer: {subject}"])
    except OSError as e:  # ssl.SSLError included
        raise HandshakeError(f"{host}:{port}: {_failure(e, args.cert, name)}") from None
    return 0


def _client_signature(key: str, tls: ssl.SSLSocket) -> tuple[dict[str, Any], str]:
    """What signed for us — the TPM (and with which scheme), a software key file, nothing — as data and as a line."""
    from ..errors import KeyFileError
    from ..tpm.keyfile import read_key_reference

    try:
        read_key_reference(key)
    except KeyFileError:
        return {"by": "software", "scheme": None}, f"client key: {key}, a software key (not in the TPM)"
    scheme = last_signature_scheme()
    if tls.session_reused:
        return {"by": None, "scheme": None}, "client signature: none (session resumed)"
    if scheme is None:
        return {"by": None, "scheme": None}, "client signature: none (the server asked for no client certificate)"
    return {"by": "tpm", "scheme": scheme}, f"client signature: {scheme} (in the TPM)"


def _await_verdict(tls: ssl.SSLSocket, seconds: float = 1.0) -> None:
    """In TLS 1.3 the server checks our certificate after our side of the handshake is
    done (RFC 8446, 4.4): read briefly, so a refusal arrives as its alert here. A server
    that accepted sends session tickets or nothing until it is spoken to."""
    tls.settimeout(seconds)
    try:
        tls.recv(1)
    except (socket.timeout, TimeoutError):
        pass


def _failure(e: OSError, cert: str, name: str) -> str:
    """Our words for why the handshake failed (tls/diagnosis.py decides the cause); a refusal
    says what the server's alert means, and our certificate's own dates come first."""
    found = diagnose(e, ours=cert)
    if found.cause in (Cause.UNTRUSTED, Cause.NAME_MISMATCH) or (found.cause is Cause.EXPIRED and not found.ours):
        return f"server certificate not trusted for {name!r}: {getattr(e, 'verify_message', None) or found.reason}"
    if found.cause is Cause.TPM:
        return found.reason
    if found.cause in (Cause.UNREACHABLE, Cause.TIMEOUT) and not isinstance(e, ssl.SSLError):
        return f"cannot connect: {found.reason}"
    if found.cause is Cause.EXPIRED:
        return f"handshake failed: the server refused our client certificate ({found.reason}): " \
               f"{found.dates or 'it considers it expired'}"
    if found.cause is not Cause.REFUSED:
        return f"handshake failed: {found.reason}"
    if found.alert == "unknown ca":
        return f"handshake failed: the server refused our client certificate ({found.reason}): " \
               "it does not trust the CA that issued it"
    if found.alert == "certificate required":
        return f"handshake failed: the server requires a client certificate and did not accept ours ({found.reason})"
    return f"handshake failed: the server refused our client certificate ({found.reason})"
