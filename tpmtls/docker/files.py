"""Docker's files on disk, in one place: certs.d for registries, DOCKER_CERT_PATH for daemons.

certs.d: `<root>/<host[:port]>/` with Docker's rules — every `*.crt` is a CA added to the
system roots, every `X.cert` needs its `X.key` and vice versa, the first pair by name is
the client certificate. Two roots: tpmtls's own (`$TPMTLS_CERTS_D` or /etc/tpmtls/certs.d)
first, then Docker's (`$DOCKER_CERTS_D` or /etc/docker/certs.d: its CAs and software
pairs). A TPM key lives in tpmtls's root: stock dockerd reads every pair in its own
certs.d and fails every pull and push to a host whose `client.key` it cannot parse, so
one found there still works, with a warning that says how to move it.

DOCKER_CERT_PATH: `ca.pem`, `cert.pem`, `key.pem` (here `key.pem` is the TPM key file),
chosen as the docker CLI and docker-py choose it: argument > $DOCKER_CERT_PATH > ~/.docker.

Whether a key file holds a TPM key is `tpm.keyfile.is_tpm_key`'s call, one rule for all.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from .._files import check_directory, read_input, write_files
from ..errors import RegistryError, UsageError
from ..tpm.keyfile import is_tpm_key_file

# ---- certs.d ----

TPMTLS_ROOT = Path("/etc/tpmtls/certs.d")
DOCKER_ROOT = Path("/etc/docker/certs.d")
#: Docker's names in a certs.d host directory (the CA, the client certificate and its key).
CA_CRT, CLIENT_CERT, CLIENT_KEY = "ca.crt", "client.cert", "client.key"


def tpmtls_root(root: str | os.PathLike[str] | None = None) -> Path:
    """tpmtls's certs.d: `root` if given, else $TPMTLS_CERTS_D, else /etc/tpmtls/certs.d."""
    return Path(root) if root is not None else Path(os.environ.get("TPMTLS_CERTS_D") or TPMTLS_ROOT)


def docker_root() -> Path:
    """Docker's certs.d: $DOCKER_CERTS_D, else /etc/docker/certs.d."""
    return Path(os.environ.get("DOCKER_CERTS_D") or DOCKER_ROOT)


@dataclass(frozen=True)
class CertDir:
    """What one certs.d directory holds."""

    directory: Path | None
    cas: tuple[Path, ...] = ()
    pairs: tuple[tuple[Path, Path], ...] = field(default=())  # (X.cert, X.key), sorted

    @property
    def client(self) -> tuple[Path, Path] | None:
        """The client certificate and key used (the first pair by name, like Docker's first)."""
        return self.pairs[0] if self.pairs else None

    def is_tpm_key(self) -> bool:
        """Is the client key a TPM key (which stock docker cannot read)?"""
        return self.client is not None and is_tpm_key_file(self.client[1])


def check_hostport(hostport: str) -> str:
    """HOST[:PORT] by distribution's domain grammar, so it names one directory: never a path, never `..`."""
    from ..registry.reference import valid_hostport

    if not valid_hostport(hostport) or hostport.startswith("."):
        raise UsageError(f"{hostport!r}: not a registry HOST[:PORT] (like registry.example.com:5000)")
    return hostport


def cert_dir_for(hostport: str, root: Path = TPMTLS_ROOT) -> Path | None:
    """`root/<host:port>` (Docker's lookup); None if there is no such directory."""
    candidate = root / hostport
    return candidate if candidate.is_dir() else None


def read_cert_dir(directory: Path | None) -> CertDir:
    """Apply Docker's rules to a certs.d directory (None: no client cert, system CAs)."""
    if directory is None:
        return CertDir(None)
    if not directory.is_dir():
        raise RegistryError(f"{directory}: no such certificate directory")
    files = sorted(p for p in directory.iterdir() if p.is_file())
    cas = tuple(p for p in files if p.suffix == ".crt")
    certs = {p.stem: p for p in files if p.suffix == ".cert"}
    keys = {p.stem: p for p in files if p.suffix == ".key"}
    for stem in sorted(set(certs) - set(keys)):
        raise RegistryError(f"{certs[stem]}: client certificate without its key {stem}.key (Docker's certs.d rule)")
    for stem in sorted(set(keys) - set(certs)):
        raise RegistryError(f"{keys[stem]}: key without its client certificate {stem}.cert (Docker's certs.d rule)")
    return CertDir(directory, cas, tuple((certs[s], keys[s]) for s in sorted(certs)))


def lookup(hostport: str, ours: Path | None = None, docker: Path | None = None) -> CertDir:
    """tpmtls's certs.d, then Docker's: CAs of both; the client pair from ours if it has one."""
    mine = read_cert_dir(cert_dir_for(hostport, ours or tpmtls_root()))
    theirs = read_cert_dir(cert_dir_for(hostport, docker or docker_root()))
    if mine.client is None and theirs.client is not None and theirs.is_tpm_key():
        cert, key = theirs.client
        dest = (ours or tpmtls_root()) / hostport
        logging.getLogger("tpmtls.docker").warning(
            f"{key} is a TPM key in Docker's certs.d, where it makes stock docker fail for {hostport}; "
            f"move it: mkdir -p {dest} && mv {cert} {key} {dest}/")
    directory = mine.directory if mine.client is not None or theirs.directory is None else theirs.directory
    return CertDir(directory, mine.cas + theirs.cas, mine.pairs + theirs.pairs)


def write_cert_dir(hostport: str, files: Mapping[str, tuple[bytes, int]],
                   root: str | os.PathLike[str] | None = None, *, force: bool = False,
                   group: int | None = None) -> Path:
    """Write {name: (data, mode)} into tpmtls's `<root>/<hostport>/`, all or nothing: a new directory
    appears whole; files already there are replaced only with `force` (a key kept as client.key.bak).
    With `group` (a gid) the files belong to that group."""
    base = check_root(root)
    target = base / check_hostport(hostport)
    check_directory(target)
    return write_files(target, files, overwrite=force, keep=[CLIENT_KEY], group=group)


def check_root(root: str | os.PathLike[str] | None) -> Path:
    """tpmtls's certs.d root, refusing Docker's own: a TPM key there breaks stock docker for the host."""
    base = tpmtls_root(root)
    for docker in {docker_root(), DOCKER_ROOT}:
        if _same_place(base, docker):
            raise UsageError(f"{base}: this is Docker's certs.d; a TPM key there makes stock docker fail every pull "
                             f"and push to the host; install into tpmtls's own (default {TPMTLS_ROOT})")
    return base


def _same_place(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def install(hostport: str, cert: str, key: str, ca: str, root: str | os.PathLike[str] | None = None,
            tcti: str | None = None, *, force: bool = False, group: int | None = None) -> Path:
    """`tpmtls certs install`: check the TPM key, its certificate and the CA, then write
    ca.crt, client.cert and client.key (0600; 0640 for `group`, e.g. the services' tpmtls
    group: docs/services.md) into tpmtls's `<root>/<hostport>/`.

    Everything that needs no TPM is checked first (the host, the root, the files); an installed
    key is replaced only with `force`, and kept as client.key.bak."""
    from cryptography.hazmat.primitives import serialization

    from ..tpm.keyfile import read_key_reference
    from .certcheck import check_ca, check_client_cert

    check_hostport(hostport)
    target = check_root(root) / hostport
    check_directory(target)
    if not force and (target / CLIENT_KEY).exists():
        raise UsageError(f"{target}: already holds a client key; remove it, or replace it with --force "
                         f"(the old one is kept as {CLIENT_KEY}.bak)")
    blob = read_key_reference(key)  # a clear error if it is not a TPM key file or handle
    check_ca(ca)
    if blob.public is not None:
        public_key = serialization.load_pem_public_key(blob.public.to_pem())
    else:  # a persistent handle: only the TPM knows its public key
        from ..tpm import connect

        public_key = connect(tcti).load_key(key).public_key()
    check_client_cert(cert, public_key)
    files = {CA_CRT: (read_input(ca, "CA certificate"), 0o644), CLIENT_CERT: (read_input(cert, "certificate"), 0o644),
             CLIENT_KEY: (read_input(key, "key") if blob.public is not None else blob.to_pem(),
                          0o600 if group is None else 0o640)}
    return write_cert_dir(hostport, files, root, force=force, group=group)


# ---- DOCKER_CERT_PATH ----

#: Docker's names in DOCKER_CERT_PATH (docker CLI and docker-py alike).
CA_PEM, CERT_PEM, KEY_PEM = "ca.pem", "cert.pem", "key.pem"


@dataclass(frozen=True)
class CertPath:
    """A DOCKER_CERT_PATH directory: ca.pem, cert.pem and key.pem (Docker's names)."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / CA_PEM

    @property
    def cert(self) -> Path:
        return self.directory / CERT_PEM

    @property
    def key(self) -> Path:
        return self.directory / KEY_PEM

    def check_files(self) -> "CertPath":
        """One line naming the first missing file and what to put there."""
        if not self.directory.is_dir():
            raise UsageError(f"{self.directory}: no such certificate directory (DOCKER_CERT_PATH); "
                             "lay it out with 'tpmtls certs env HOST:PORT --cert-path DIR --cert C --key K --ca CA'")
        for path, what in ((self.ca, "the CA certificate that signed the daemon's"),
                           (self.cert, "your client certificate"), (self.key, "your TPM key file")):
            if not path.is_file():
                raise UsageError(f"{path}: missing; DOCKER_CERT_PATH needs {path.name} ({what})")
        return self

    def lay_out(self, ca: str | os.PathLike[str], cert: str | os.PathLike[str], key: str | os.PathLike[str], *,
                force: bool = False, group: int | None = None) -> "CertPath":
        """Copy the CA, the client certificate and the key file in under Docker's names (key.pem 0600),
        all or nothing; files already there are replaced only with `force` (key.pem kept as key.pem.bak).
        With `group` (a gid), key.pem is 0640 and the files the group's."""
        files = {CA_PEM: (read_input(ca, "CA certificate"), 0o644), CERT_PEM: (read_input(cert, "certificate"), 0o644),
                 KEY_PEM: (read_input(key, "key"), 0o600 if group is None else 0o640)}
        write_files(self.directory, files, overwrite=force, keep=[KEY_PEM], dir_mode=0o700 if group is None else 0o750,
                    group=group)
        return self

    def check_layable(self, force: bool = False) -> "CertPath":
        """Before any TPM work: the directory can be made or written, and holds none of our files unless `force`."""
        check_directory(self.directory)
        there = [name for name in (CA_PEM, CERT_PEM, KEY_PEM) if (self.directory / name).exists()]
        if there and not force:
            raise UsageError(f"{self.directory}: already holds {', '.join(there)}; use another --cert-path, or "
                             "replace them with --force (key.pem is kept as key.pem.bak)")
        return self


def default_cert_path(cert_path: str | os.PathLike[str] | None = None) -> CertPath:
    """Argument > $DOCKER_CERT_PATH > ~/.docker, as the docker CLI and docker-py choose."""
    chosen = cert_path or os.environ.get("DOCKER_CERT_PATH") or os.path.join(os.path.expanduser("~"), ".docker")
    return CertPath(Path(chosen))


__all__ = ["CA_CRT", "CA_PEM", "CERT_PEM", "CLIENT_CERT", "CLIENT_KEY", "DOCKER_ROOT", "KEY_PEM", "TPMTLS_ROOT",
           "CertDir", "CertPath", "cert_dir_for", "check_hostport", "default_cert_path", "docker_root", "install",
           "lookup",
           "read_cert_dir", "tpmtls_root", "write_cert_dir"]
