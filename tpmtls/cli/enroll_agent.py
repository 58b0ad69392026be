"""`tpmtls enroll-agent`: the server side of pairing, before dockerd starts on the same socket."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
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
    p.set_defaults(func=run, long_running=True)


def run(args: argparse.Namespace) -> int:
    from ..enroll.pairing_agent import run_agent

    run_agent(args.ca, args.state, args.dockerd_arg, dockerd=args.dockerd, sans=args.san, listen=args.listen)
    return 0  # not reached: the agent becomes dockerd


__all__ = ["add_parser"]
