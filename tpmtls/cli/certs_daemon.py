"""`tpmtls certs daemon-config|env|nginx-front`: TLS for a Docker daemon and its clients (docs/daemon.md)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from .._files import write_atomic
from ..docker.config import (
    DEFAULT_SOCKET,
    DEFAULT_TCP_HOST,
    CertPath,
    check_chain,
    check_names,
    check_server,
    daemon_config,
    is_tpm_key_file,
    parse_host,
)
from ..errors import TlsSetupError, UsageError
from ._common import add_password_file, add_tcti, read_secret_file, say


def _subparsers(certs: argparse.ArgumentParser) -> "argparse._SubParsersAction[argparse.ArgumentParser]":
    for action in certs._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise RuntimeError("the certs command has no subcommands")  # pragma: no cover - a wiring bug


def register(certs: argparse.ArgumentParser) -> None:
    """Add the daemon-side subcommands to the existing `tpmtls certs` group."""
    ssub = _subparsers(certs)
    ssub.metavar = "{install,daemon-config,env,nginx-front}"
    p = ssub.add_parser("daemon-config", help="daemon.json TLS block and the systemd drop-in for dockerd")
    p.add_argument("--cert", required=True, metavar="C", help="the daemon's server certificate")
    p.add_argument("--key", required=True, metavar="K", help="the daemon's key (a file key: dockerd cannot use a TPM)")
    p.add_argument("--ca", required=True, metavar="CA", help="the CA whose client certificates the daemon accepts")
    p.add_argument("--host", action="append", metavar="tcp://ADDR:PORT",
                   help=f"where dockerd listens with TLS (repeatable; default {DEFAULT_TCP_HOST})")
    p.add_argument("--socket", default=DEFAULT_SOCKET, metavar="PATH",
                   help=f"also keep the local unix socket (default {DEFAULT_SOCKET}; '' for none)")
    p.add_argument("--out", metavar="DIR", help="write DIR/daemon.json and DIR/docker.conf (the drop-in) instead of printing")
    p.set_defaults(func=run_daemon_config)

    p = ssub.add_parser("env", help="DOCKER_HOST / DOCKER_TLS_VERIFY / DOCKER_CERT_PATH for a TLS daemon")
    p.add_argument("hostport", metavar="HOST:PORT")
    p.add_argument("--cert-path", required=True, metavar="DIR", help="ca.pem, cert.pem, key.pem (key.pem: the TPM key file)")
    p.add_argument("--cert", metavar="C", help="lay out DIR first: copy C to DIR/cert.pem")
    p.add_argument("--key", metavar="K", help="… and the TPM key file K to DIR/key.pem")
    p.add_argument("--ca", metavar="CA", help="… and the CA certificate to DIR/ca.pem")
    add_password_file(p)
    add_tcti(p)
    p.set_defaults(func=run_env)

    p = ssub.add_parser("nginx-front", help="nginx.conf for NGINX terminating mTLS in front of docker.sock")
    p.add_argument("--cert", required=True, metavar="C", help="NGINX's server certificate")
    p.add_argument("--key", required=True, metavar="K", help="NGINX's key (a file key)")
    p.add_argument("--ca", required=True, metavar="CA", help="the CA whose client certificates are let through")
    p.add_argument("--listen", default="0.0.0.0:2376", metavar="ADDR:PORT", help="default 0.0.0.0:2376")
    p.add_argument("--socket", default=DEFAULT_SOCKET, metavar="PATH", help=f"dockerd's socket (default {DEFAULT_SOCKET})")
    p.add_argument("--user", metavar="USER", help="NGINX worker user (one that may open the socket)")
    p.add_argument("--out", metavar="FILE", help="write FILE atomically instead of printing")
    p.set_defaults(func=run_nginx_front)


def _out_dir(path: str) -> Path:
    d = Path(path)
    if not d.is_dir():
        raise UsageError(f"{d}: no such directory (create it first)")
    return d


def run_daemon_config(args: argparse.Namespace) -> int:
    hosts = args.host or [DEFAULT_TCP_HOST]
    out = _out_dir(args.out) if args.out else None
    cfg = daemon_config(args.cert, args.key, args.ca, hosts, args.socket or None)
    if out is None:
        say("# /etc/docker/daemon.json")
        print(cfg.daemon_json, end="")
        say("")
        print(cfg.dropin, end="")
        return 0
    write_atomic(out / "daemon.json", cfg.daemon_json.encode(), 0o644)
    write_atomic(out / "docker.conf", cfg.dropin.encode(), 0o644)
    say(f"wrote {out / 'daemon.json'} and {out / 'docker.conf'}; install them with:")
    say(f"  install -m 644 {out / 'daemon.json'} /etc/docker/daemon.json")
    say(f"  install -D -m 644 {out / 'docker.conf'} /etc/systemd/system/docker.service.d/docker.conf")
    say("  systemctl daemon-reload && systemctl restart docker")
    return 0


def run_env(args: argparse.Namespace) -> int:
    from ..cli.connect import split_target

    host, port = split_target(args.hostport)
    given = {"cert": args.cert, "key": args.key, "ca": args.ca}
    directory = Path(args.cert_path)
    paths = CertPath(directory)
    if any(given.values()):
        missing = [f"--{k}" for k, v in given.items() if not v]
        if missing:
            raise UsageError(f"to lay out {directory} give --cert, --key and --ca together (missing {', '.join(missing)})")
        for f in given.values():
            if not Path(f).is_file():
                raise UsageError(f"{f}: no such file")
        _check_client(args.cert, args.key, args.ca, args)
        directory.mkdir(parents=True, exist_ok=True)
        for src, dst, mode in ((args.ca, paths.ca, 0o644), (args.cert, paths.cert, 0o644), (args.key, paths.key, 0o600)):
            write_atomic(dst, Path(src).read_bytes(), mode)
    else:
        paths.check_files()
        _check_client(str(paths.cert), str(paths.key), str(paths.ca), args)
    docker_host = f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"
    say(f"export DOCKER_HOST={shlex.quote(docker_host)}")
    say("export DOCKER_TLS_VERIFY=1")
    say(f"export DOCKER_CERT_PATH={shlex.quote(str(directory.resolve()))}")
    return 0


def _check_client(cert: str, key: str, ca: str, args: argparse.Namespace) -> None:
    """The certificate is a client certificate from the CA, and belongs to the TPM key."""
    if not is_tpm_key_file(key):
        raise UsageError(f"{key}: not a TPM key file (TSS2 PRIVATE KEY); a software key needs no tpmtls")
    certificate = check_chain(cert, ca, server=False)
    from .. import connect

    tpm_key = connect(args.tcti).load_key(key, read_secret_file(args.password_file))
    if tpm_key.public_key() != certificate.public_key():
        raise TlsSetupError(f"{cert}: this certificate does not belong to the key {key}")


def run_nginx_front(args: argparse.Namespace) -> int:
    from ..docker.nginx import render_nginx_front

    cert = check_server(args.cert, args.key, args.ca)
    _kind, addr, _port = parse_host(f"tcp://{args.listen}")
    check_names(args.cert, cert, addr)
    if not Path(args.socket).is_absolute():
        raise UsageError(f"{args.socket}: the daemon's socket must be an absolute path")
    text = render_nginx_front(cert=str(Path(args.cert).resolve()), key=str(Path(args.key).resolve()),
                              ca=str(Path(args.ca).resolve()), listen=args.listen, socket=args.socket,
                              user=args.user)
    if args.out:
        out = Path(args.out)
        if not out.parent.is_dir():
            raise UsageError(f"{out}: directory {out.parent} does not exist")
        write_atomic(out, text.encode(), 0o644)
        say(f"wrote {out}; check it with: nginx -t -c {out.resolve()}")
    else:
        print(text, end="")
    return 0


__all__ = ["register"]
