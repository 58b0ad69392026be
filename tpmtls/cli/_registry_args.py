"""Options tpmtls-push and tpmtls-pull share: certificates, --resolve, jobs, credentials."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

from ..errors import UsageError
from ._common import add_password_file, count


def add_certs_args(p: argparse.ArgumentParser) -> None:
    """Where the client certificate comes from and how the registry's name resolves (push, pull, proxy)."""
    p.add_argument("--cert-dir", metavar="D", help="certs.d-style directory (ca.crt, client.cert, client.key); "
                   "default: tpmtls's certs.d, then Docker's, for HOST[:PORT]")
    p.add_argument("--certs-root", metavar="DIR", help="tpmtls's certs.d root, read before Docker's "
                   "(default $TPMTLS_CERTS_D or /etc/tpmtls/certs.d; Docker's: $DOCKER_CERTS_D or /etc/docker/certs.d)")
    p.add_argument("--resolve", action="append", metavar="HOST:PORT:ADDR",
                   help="connect to ADDR for HOST:PORT, like curl (repeatable; needed when HOST itself is mapped "
                   "to loopback)")
    add_password_file(p, "file holding the client key's password (a TPM key made with one); without it, the "
                         "password is asked for on the terminal, and with no terminal the command fails")


def add_registry_args(p: argparse.ArgumentParser) -> None:
    add_certs_args(p)
    p.add_argument("--jobs", type=count(1, 64), default=4, metavar="N", help="blobs in parallel (default 4, at most 64)")
    p.add_argument("--username", help="registry user (default: docker config / credential helper)")
    p.add_argument("--password-stdin", action="store_true", help="read the registry password from stdin")


def registry_options(args: argparse.Namespace) -> dict[str, Any]:
    from ..registry.credentials import Credentials
    from ..registry.transport import parse_resolve

    if args.jobs < 1 or args.jobs > 64:
        raise UsageError(f"--jobs {args.jobs}: use 1 to 64")
    credentials = None
    if args.password_stdin and not args.username:
        raise UsageError("--password-stdin needs --username")
    if args.username:
        if not args.password_stdin:
            raise UsageError("--username needs --password-stdin (passwords never go on the command line)")
        secret = sys.stdin.readline().rstrip("\r\n")
        if not secret:
            raise UsageError("--password-stdin: stdin gave an empty password")
        credentials = Credentials(args.username, secret, "--username/--password-stdin")
    if getattr(args, "digestfile", None):
        from .._files import check_writable

        check_writable(args.digestfile, overwrite=True)  # replaced like skopeo's, but known writable first
    return {
        "cert_dir": args.cert_dir,
        "certs_root": args.certs_root,
        "resolve": parse_resolve(args.resolve),
        "jobs": args.jobs,
        "credentials": credentials,
        "key_password": client_key_password(args),
    }


def client_key_password(args: argparse.Namespace) -> Callable[[Path], bytes | None]:
    """The client key's password, once its certs.d directory is known: --password-file or the terminal."""
    from ._common import key_password

    return lambda key: key_password(str(key), args.password_file)


def add_output_args(p: argparse.ArgumentParser, done: str) -> None:
    """--digestfile, as skopeo copy has it (-q/--quiet comes with every parser)."""
    p.add_argument("--digestfile", metavar="F", help=f"write the digest of the {done} manifest to F "
                   "(sha256:…, no newline, as skopeo copy --digestfile does)")


def progress_for(args: argparse.Namespace) -> Any:
    """Bars on a terminal's stderr; plain lines on stdout otherwise — none with -q, and none on
    stdout with --format json, whose one JSON object is all stdout carries."""
    from ..registry.progress import Progress

    if getattr(args, "quiet", 0):
        return Progress(None, plain=None)
    bars = sys.stderr if sys.stderr.isatty() else None
    return Progress(bars, plain=None if getattr(args, "format", "text") == "json" else sys.stdout)


def write_digest(args: argparse.Namespace, digest: str) -> None:
    if getattr(args, "digestfile", None):
        from .._files import write_atomic

        write_atomic(args.digestfile, digest.encode(), 0o644)
