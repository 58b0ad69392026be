"""Registry test set-up: certs.d directories with TPM or software client keys, CLI runners."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from support.peers import Pki
from tpmtls.lab.process import child_env


def cert_dir(directory: Path, pki: Pki, cert: Path | None, key: Path | None, *, with_ca: bool = True) -> Path:
    """A certs.d-style directory: ca.crt, client.cert, client.key (Docker's names)."""
    directory.mkdir(parents=True, exist_ok=True)
    if with_ca:
        shutil.copy(pki.ca_file, directory / "ca.crt")
    if cert is not None and key is not None:
        shutil.copy(cert, directory / "client.cert")
        shutil.copy(key, directory / "client.key")
    return directory


def tpm_cert_dir(directory: Path, pki: Pki, tpm, alg: str = "ecc-p256") -> Path:
    """A certs.d directory whose client.key is a TPM key (TSS2 PRIVATE KEY)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = tpm.create_key(alg, directory / "client.key")
    cert = pki.issue(key.public_key(), f"pusher-{directory.name}", f"pusher-{directory.name}.cert")
    shutil.copy(pki.ca_file, directory / "ca.crt")
    shutil.copy(cert, directory / "client.cert")
    return directory


def software_cert_dir(directory: Path, pki: Pki, cn: str = "skopeo") -> Path:
    cert, key = pki.software_client(cn)
    return cert_dir(directory, pki, cert, key)


def run_cli(module: str, *args: str, env: dict[str, str], stdin: str | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", f"tpmtls.cli.{module}", *args], capture_output=True, text=True,
                          env={**child_env(), **env}, input=stdin, timeout=timeout)


def skopeo_raw(ref: str, certs: Path) -> tuple[bytes, str]:
    """The manifest bytes skopeo reads (software client cert), and their digest."""
    proc = subprocess.run(["skopeo", "inspect", "--raw", "--cert-dir", str(certs), f"docker://{ref}"],
                          capture_output=True, env=child_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout, "sha256:" + hashlib.sha256(proc.stdout).hexdigest()


def skopeo_layers(ref: str, certs: Path) -> list[str]:
    proc = subprocess.run(["skopeo", "inspect", "--cert-dir", str(certs), f"docker://{ref}"],
                          capture_output=True, env=child_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return json.loads(proc.stdout)["Layers"]


def partial_sizes(directory: Path) -> list[int]:
    """Sizes of the `.tmp-` files under `directory` (a download in progress); a file renamed
    into place between listing and stat is simply not counted."""
    sizes = []
    for path in directory.rglob(".tmp-*") if directory.is_dir() else []:
        try:
            if path.is_file():
                sizes.append(path.stat().st_size)
        except FileNotFoundError:
            continue
    return sizes


def env_for(test_tpm, tmp: Path, **extra: str) -> dict[str, str]:
    """TPM, a private blob cache and docker config for a CLI run."""
    return {**test_tpm.env, "XDG_CACHE_HOME": str(tmp / "cache"), "DOCKER_CONFIG": str(tmp / "docker"),
            **extra}


def rootfs_tar(name: str, data: bytes) -> bytes:
    """A tar of one file: what `docker import -` turns into a one-layer image."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
