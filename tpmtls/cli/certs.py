"""`tpmtls certs install|daemon-config|env|nginx-front|containerd-hosts|registries-conf`: Docker's files
for a registry client (certs.d) and for a TLS daemon and its clients (daemon.json, DOCKER_CERT_PATH, an
NGINX front), and the files that send containerd, podman, buildah and skopeo through `tpmtls proxy`;
docs/formats.md, docs/daemon.md and docs/oci-clients.md."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from .._files import check_writable, write_atomic, write_files
from ..docker.certcheck import check_names, check_server, check_tpm_client
from ..docker.config import DEFAULT_SOCKET, DEFAULT_TCP_HOST, daemon_config, parse_host
from ..docker.files import CertPath, install
from ..docker.oci_clients import (
    CONTAINERD_CERTS_D,
    REGISTRIES_CONF_D,
    ClientConfig,
    containerd_hosts,
    proxy_address,
    registries_conf,
    remove_config,
    write_config,
)
from ..errors import UsageError
from ._common import add_password_file, add_tcti, read_secret_file, say, split_target


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`tpmtls certs` and its subcommands."""
    certs = sub.add_parser("certs", help="Docker's certs.d, daemon.json, DOCKER_CERT_PATH and an NGINX front")
    ssub = certs.add_subparsers(dest="certs_command", required=True)

    p = ssub.add_parser("install", help="check and put ca.crt, client.cert, client.key in tpmtls's certs.d for HOST[:PORT]")
    p.add_argument("hostport", metavar="HOST[:PORT]")
    p.add_argument("--cert", required=True, metavar="C")
    p.add_argument("--key", required=True, metavar="K", help="the TPM key file (TSS2 PRIVATE KEY) or handle form")
    p.add_argument("--ca", required=True, metavar="CA")
    p.add_argument("--root", default=None, metavar="DIR",
                   help="tpmtls's certs.d (default $TPMTLS_CERTS_D or /etc/tpmtls/certs.d; never Docker's: a TPM "
                   "key there breaks stock docker for that registry)")
    p.add_argument("--force", action="store_true", help="replace an installed certificate and key (the old key is "
                                                        "kept as client.key.bak)")
    p.add_argument("--group", metavar="GROUP", help="give the files to GROUP, the key readable by it (0640): "
                   "--group tpmtls for the proxy services (docs/services.md)")
    add_tcti(p)
    p.set_defaults(func=run_install)

    p = ssub.add_parser("daemon-config", help="daemon.json TLS block and the systemd drop-in for dockerd")
    p.add_argument("--cert", required=True, metavar="C", help="the daemon's server certificate")
    p.add_argument("--key", required=True, metavar="K", help="the daemon's key (a file key: dockerd cannot use a TPM)")
    p.add_argument("--ca", required=True, metavar="CA", help="the CA whose client certificates the daemon accepts")
    p.add_argument("--host", action="append", metavar="tcp://ADDR:PORT",
                   help=f"where dockerd listens with TLS (repeatable; default {DEFAULT_TCP_HOST})")
    p.add_argument("--socket", default=DEFAULT_SOCKET, metavar="PATH",
                   help=f"also keep the local unix socket (default {DEFAULT_SOCKET}; '' for none)")
    p.add_argument("--merge", metavar="FILE", help="an existing daemon.json (e.g. /etc/docker/daemon.json) whose "
                                                   "settings are kept: its TLS ones replaced, its hosts kept after ours")
    p.add_argument("--out", metavar="DIR", help="write DIR/daemon.json and DIR/docker.conf (the drop-in) instead of "
                                                "printing daemon.json")
    p.add_argument("--force", action="store_true", help="replace DIR/daemon.json and DIR/docker.conf if they exist")
    p.set_defaults(func=run_daemon_config)

    p = ssub.add_parser("env", help="DOCKER_HOST / DOCKER_TLS_VERIFY / DOCKER_CERT_PATH for a TLS daemon")
    p.add_argument("hostport", metavar="HOST:PORT")
    p.add_argument("--cert-path", required=True, metavar="DIR", help="ca.pem, cert.pem, key.pem (key.pem: the TPM key file)")
    p.add_argument("--cert", metavar="C", help="lay out DIR first: copy C to DIR/cert.pem")
    p.add_argument("--key", metavar="K", help="… and the TPM key file K to DIR/key.pem")
    p.add_argument("--ca", metavar="CA", help="… and the CA certificate to DIR/ca.pem")
    p.add_argument("--force", action="store_true", help="replace ca.pem, cert.pem and key.pem already in DIR (the old "
                                                        "key.pem is kept as key.pem.bak)")
    p.add_argument("--group", metavar="GROUP", help="laying out DIR: give the files to GROUP, key.pem readable by "
                   "it (0640): --group tpmtls for the daemon-proxy service (docs/services.md)")
    add_password_file(p)
    add_tcti(p)
    p.set_defaults(func=run_env)

    p = ssub.add_parser("nginx-front", help="nginx.conf for NGINX terminating mTLS in front of docker.sock")
    p.add_argument("--cert", required=True, metavar="C", help="NGINX's server certificate")
    p.add_argument("--key", required=True, metavar="K", help="NGINX's key (a file key)")
    p.add_argument("--ca", required=True, metavar="CA", help="the CA whose client certificates are let through")
    p.add_argument("--listen", default="0.0.0.0:2376", metavar="ADDR:PORT", help="default 0.0.0.0:2376")
    p.add_argument("--socket", default=DEFAULT_SOCKET, metavar="PATH", help=f"dockerd's socket (default {DEFAULT_SOCKET})")
    p.add_argument("--user", metavar="USER [GROUP]", help="NGINX worker user, and group, that may open the socket "
                                                          "(default: nobody in the socket's group, if it is here)")
    p.add_argument("--crl", metavar="CRL", help="refuse clients this CRL revokes ('tpmtls ca crl'; re-sign it and "
                                                "reload NGINX before its next update: docs/revocation.md)")
    p.add_argument("--out", metavar="FILE", help="write FILE atomically instead of printing")
    p.add_argument("--force", action="store_true", help="replace FILE if it exists")
    p.set_defaults(func=run_nginx_front)
    _add_client_config_parsers(ssub)


def _add_client_config_parsers(ssub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """containerd-hosts and registries-conf: other OCI clients sent through `tpmtls proxy` (docs/oci-clients.md)."""
    p = ssub.add_parser("containerd-hosts", help="containerd's hosts.toml sending pulls and pushes for REG to tpmtls proxy")
    p.add_argument("registry", metavar="REG[:PORT]", help="the registry as image names spell it")
    p.add_argument("--proxy", required=True, metavar="ADDR:PORT", help="where tpmtls proxy listens (loopback)")
    p.add_argument("--dir", default=str(CONTAINERD_CERTS_D), metavar="DIR",
                   help=f"containerd's config_path / ctr --hosts-dir (default {CONTAINERD_CERTS_D})")
    _add_config_modes(p)
    p.set_defaults(func=run_containerd_hosts)

    p = ssub.add_parser("registries-conf", help="a registries.conf.d drop-in for podman, buildah and skopeo")
    p.add_argument("registry", metavar="REG[:PORT]", help="the registry as image names spell it")
    p.add_argument("--proxy", required=True, metavar="ADDR:PORT", help="where tpmtls proxy listens (loopback)")
    p.add_argument("--out", metavar="FILE",
                   help=f"the drop-in (default {REGISTRIES_CONF_D}/90-tpmtls-REG[-PORT].conf)")
    _add_config_modes(p)
    p.set_defaults(func=run_registries_conf)


def _add_config_modes(p: argparse.ArgumentParser) -> None:
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--print", action="store_true", help="show the file and where it would go; write nothing")
    mode.add_argument("--remove", action="store_true", help="delete the file tpmtls wrote (undo)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing file; with --remove, delete one tpmtls did not write")


def run_containerd_hosts(args: argparse.Namespace) -> int:
    config = containerd_hosts(args.registry, args.proxy, args.dir)
    hint = (f"containerd reads it at the next pull: the CRI plugin (kubelet) when config_path = \"{args.dir}\" in its "
            f"config.toml; ctr with --hosts-dir {args.dir}")
    return _apply(config, args, hint)


def run_registries_conf(args: argparse.Namespace) -> int:
    config = registries_conf(args.registry, args.proxy, args.out)
    via = "{}:{}".format(*proxy_address(args.proxy))  # an IPv4 address: registries_conf refuses IPv6
    hint = (f"podman, buildah and skopeo pull {args.registry}/… through the proxy from their next run; pushes name "
            f"the proxy: podman push {args.registry}/IMAGE {via}/IMAGE")
    return _apply(config, args, hint)


def _apply(config: ClientConfig, args: argparse.Namespace, hint: str) -> int:
    """--print, --remove or write; what happened goes to stderr, so --print's stdout is the file alone."""
    if args.print:
        print(f"# {config.path}", file=sys.stderr)
        print(config.text, end="")
        return 0
    if args.remove:
        done = remove_config(config, force=args.force)
        print(f"removed {config.path}" if done == "removed" else f"{config.path}: not there, nothing to remove",
              file=sys.stderr)
        return 0
    done = write_config(config, force=args.force)
    if done == "unchanged":
        print(f"{config.path}: unchanged (it already says this)", file=sys.stderr)
    else:
        print(f"{done} {config.path}; {hint}", file=sys.stderr)
    return 0


def _group(name: str | None) -> int | None:
    """--group NAME → its gid, or a one-line error."""
    if name is None:
        return None
    import grp

    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise UsageError(f"--group {name}: no such group (make install creates tpmtls; or groupadd {name})") from None


def run_install(args: argparse.Namespace) -> int:
    target = install(args.hostport, args.cert, args.key, args.ca, args.root, tcti=args.tcti, force=args.force,
                     group=_group(args.group))
    say(f"installed {target}/ca.crt, client.cert, client.key (tpmtls's certs.d: stock docker keeps its own "
        "/etc/docker/certs.d untouched)")
    _remember(args.cert, args.key, "certs.d", target)
    return 0


def _remember(cert: str, key: str, kind: str, directory: Path, *, quiet_stdout: bool = False) -> None:
    """Note the copy in the certificate's renewal record, so renewing it refreshes this copy too (said on
    stderr where stdout is shell lines to evaluate)."""
    from ..enroll.renewal import RenewalRecord

    if not Path(key).is_file():
        return  # a persistent handle: the copy names the key, nothing to refresh
    try:
        record = RenewalRecord.for_files(cert, key)
        record.install(kind, directory)
    except (UsageError, OSError) as e:
        print(f"tpmtls: warning: {directory} will not be refreshed when {cert} is renewed: {e}", file=sys.stderr)
        return
    note = f"renewing {cert} refreshes this copy ({record.path.absolute()})"
    if quiet_stdout:
        print(f"tpmtls: note: {note}", file=sys.stderr)
    else:
        say(note)


def run_daemon_config(args: argparse.Namespace) -> int:
    hosts = args.host or [DEFAULT_TCP_HOST]
    out = Path(args.out) if args.out else None
    if out is not None:
        if not out.is_dir():
            raise UsageError(f"{out}: no such directory (create it first)")
        there = [n for n in ("daemon.json", "docker.conf") if (out / n).exists()]
        if there and not args.force:
            raise UsageError(f"{out}: already holds {', '.join(there)}; replace with --force, or keep its settings "
                             f"with --merge {out / 'daemon.json'}")
    merge = _read_daemon_json(args.merge) if args.merge else None
    cfg = daemon_config(args.cert, args.key, args.ca, hosts, args.socket or None, merge_with=merge)
    installed = Path("/etc/docker/daemon.json")
    if out is None:
        print(cfg.daemon_json, end="")  # valid JSON on stdout: `… > daemon.json` works
        note = "# dockerd also needs a systemd drop-in: write both with --out DIR"
        if installed.exists() and merge is None:
            note += f"; {installed} exists: add --merge {installed} to keep its settings"
        print(note, file=sys.stderr)
        return 0
    write_files(out, {"daemon.json": (cfg.daemon_json.encode(), 0o644), "docker.conf": (cfg.dropin.encode(), 0o644)},
                overwrite=args.force)
    say(f"wrote {out / 'daemon.json'} and {out / 'docker.conf'}; install them with:")
    if installed.exists() and merge is None:
        say(f"  # {installed} exists and would be replaced: rerun with --merge {installed} to keep its settings")
    say(f"  install -m 644 {out / 'daemon.json'} {installed}")
    say(f"  install -D -m 644 {out / 'docker.conf'} /etc/systemd/system/docker.service.d/docker.conf")
    say("  systemctl daemon-reload && systemctl restart docker")
    return 0


def _read_daemon_json(path: str) -> dict[str, Any]:
    import json

    from .._files import read_input

    try:
        doc = json.loads(read_input(path, "daemon.json"))
    except (ValueError, RecursionError):
        raise UsageError(f"{path}: not JSON; --merge takes an existing daemon.json") from None
    if not isinstance(doc, dict):
        raise UsageError(f"{path}: not a JSON object; --merge takes an existing daemon.json")
    return doc


def run_env(args: argparse.Namespace) -> int:
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
        paths.check_layable(args.force)  # before the TPM is asked anything
        check_tpm_client(args.cert, args.key, args.ca, tcti=args.tcti, password=read_secret_file(args.password_file))
        paths.lay_out(args.ca, args.cert, args.key, force=args.force, group=_group(args.group))
        _remember(args.cert, args.key, "cert-path", directory, quiet_stdout=True)
    else:
        paths.check_files()
        check_tpm_client(str(paths.cert), str(paths.key), str(paths.ca), tcti=args.tcti,
                         password=read_secret_file(args.password_file))
    docker_host = f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"
    say(f"export DOCKER_HOST={shlex.quote(docker_host)}")
    say("export DOCKER_TLS_VERIFY=1")
    say(f"export DOCKER_CERT_PATH={shlex.quote(str(directory.resolve()))}")
    return 0


def run_nginx_front(args: argparse.Namespace) -> int:
    from ..docker.nginx import check_socket, check_user, default_user, render_nginx_front

    check_socket(args.socket)
    user = check_user(args.user) if args.user else None
    out = check_writable(args.out, args.force) if args.out else None
    cert = check_server(args.cert, args.key, args.ca)
    _kind, addr, _port = parse_host(f"tcp://{args.listen}")
    check_names(args.cert, cert, addr)
    if user is None:
        user = default_user(args.socket)
    crl = str(Path(args.crl).resolve()) if args.crl else None
    if args.crl:
        _check_crl(args.crl, args.ca)
    text = render_nginx_front(cert=str(Path(args.cert).resolve()), key=str(Path(args.key).resolve()),
                              ca=str(Path(args.ca).resolve()), listen=args.listen, socket=args.socket, user=user,
                              crl=crl)
    if out is not None:
        write_atomic(out, text.encode(), 0o644)
        say(f"wrote {out} (workers run as {user!r}); check it with: nginx -t -c {out.resolve()}")
    else:
        print(text, end="")
    return 0


def _check_crl(crl_path: str, ca_path: str) -> None:
    """The CRL is PEM or DER, signed by the CA, and not past its next update (NGINX would refuse everyone)."""
    import datetime

    from cryptography import x509

    from .._files import read_input

    data = read_input(crl_path, "CRL")
    try:
        crl = x509.load_pem_x509_crl(data) if b"-----BEGIN" in data else x509.load_der_x509_crl(data)
    except ValueError:
        raise UsageError(f"{crl_path}: not a CRL (PEM or DER); make it with 'tpmtls ca crl DIR --out FILE'") from None
    cas = x509.load_pem_x509_certificates(read_input(ca_path, "CA certificate"))
    if not any(ca.subject == crl.issuer and crl.is_signature_valid(ca.public_key()) for ca in cas):  # type: ignore[arg-type]
        raise UsageError(f"{crl_path}: not signed by the CA in {ca_path}; NGINX checks each client against its "
                         "own CA's CRL")
    if crl.next_update_utc is not None and crl.next_update_utc < datetime.datetime.now(datetime.timezone.utc):
        raise UsageError(f"{crl_path}: its next update ({crl.next_update_utc:%Y-%m-%d %H:%M} UTC) has passed: "
                         "NGINX would refuse every client; sign a new one with 'tpmtls ca crl'")


__all__ = ["add_parser"]
