"""Test infrastructure for the Docker daemon side: certificates made with the tpmtls CLI,
the lab's dockerd started from a daemon.json that `tpmtls certs daemon-config` wrote (TLS on
loopback), `tpmtls daemon-proxy` as a process, and a busybox image to run.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import NamedTuple

from support.commands import openssl
from support.processes import Supervised
from tpmtls.lab import Dockerd
from tpmtls.lab.process import child_env
from tpmtls.testing import free_port

DOCKER = "/usr/local/bin/docker" if os.path.exists("/usr/local/bin/docker") else "docker"
BUSYBOX = "/bin/busybox"
BUSYBOX_TOOLS = ("sh", "echo", "cat", "sleep", "head", "wc", "true")


def run(argv: list[str], *, env: dict[str, str] | None = None, input: str | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, env=child_env(env), input=input, timeout=timeout)


def tpmtls_cli(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = run([sys.executable, "-m", "tpmtls", *args], env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"tpmtls {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


class DaemonPki:
    """What Docker's guide to a TLS-protected daemon makes with openssl, made with tpmtls: a CA,
    the daemon's server certificate (a file key: dockerd cannot use a TPM), a TPM client and its
    DOCKER_CERT_PATH (`tpm_dir`), a software client for the stock CLI, and a client of a foreign CA."""

    def __init__(self, root: Path, tpm_env: dict[str, str]) -> None:
        self.root, self.env = root, tpm_env
        root.mkdir(parents=True, exist_ok=True)
        self.ca_dir = root / "ca"
        tpmtls_cli("ca", "init", str(self.ca_dir), "--name", "daemon test CA", env=tpm_env)
        self.ca = self.ca_dir / "ca.crt"
        self.server_key, self.server_cert = self.software_pair("server", server=True)
        # the TPM client: key created in the TPM, CSR signed there
        key, csr, cert = root / "tpm-client.key", root / "tpm-client.csr", root / "tpm-client.crt"
        tpmtls_cli("key", "create", "--alg", "ecc-p256", "--out", str(key), env=tpm_env)
        tpmtls_cli("csr", "--key", str(key), "--subject", "CN=tpm-client", "--out", str(csr), env=tpm_env)
        tpmtls_cli("ca", "issue", str(self.ca_dir), "--csr", str(csr), "--client", "--out", str(cert), env=tpm_env)
        self.tpm_key, self.tpm_cert = key, cert
        self.tpm_dir = self._cert_dir("tpm-certs", key, cert)
        self.soft_dir = self._cert_dir("soft-certs", *self.software_pair("soft-client"))
        foreign = root / "foreign-ca"
        tpmtls_cli("ca", "init", str(foreign), "--name", "some other CA", env=tpm_env)
        self.foreign_dir = self._cert_dir("foreign-certs", *self.software_pair("foreign-client", ca_dir=foreign))

    def software_pair(self, name: str, *, server: bool = False, ca_dir: Path | None = None) -> tuple[Path, Path]:
        """(key, cert): an openssl-made EC key and a certificate from `tpmtls ca issue`."""
        key, csr, cert = self.root / f"{name}.key", self.root / f"{name}.csr", self.root / f"{name}.crt"
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(key))
        openssl("req", "-new", "-key", str(key), "-subj", f"/CN={name}", "-out", str(csr))
        role = ["--server", "--san", "DNS:localhost,IP:127.0.0.1"] if server else ["--client"]
        tpmtls_cli("ca", "issue", str(ca_dir or self.ca_dir), "--csr", str(csr), *role, "--out", str(cert),
                   env=self.env)
        return key, cert

    def _cert_dir(self, name: str, key: Path, cert: Path) -> Path:
        """A DOCKER_CERT_PATH: ca.pem, cert.pem, key.pem (for the TPM client, its TPM key file)."""
        d = self.root / name
        d.mkdir()
        shutil.copy(self.ca, d / "ca.pem")
        shutil.copy(cert, d / "cert.pem")
        shutil.copy(key, d / "key.pem")
        return d


class ProxyProcess(Supervised):
    """`python -m tpmtls daemon-proxy …` as a user runs it; ready once it logs 'listening on'."""

    name = "daemon-proxy"
    ready_line = "listening on"
    socket: Path

    def __init__(self, workdir: Path, env: dict[str, str], *args: str) -> None:
        super().__init__([sys.executable, "-m", "tpmtls", "daemon-proxy", *args],
                         workdir / f"daemon-proxy-{time.monotonic_ns()}.log", env)


def busybox_archive(path: Path, tag: str = "busybox-tpmtls:1") -> Path:
    """A `docker save`-format image holding the static Debian busybox and its applet links."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("bin", "tmp"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        data = Path(BUSYBOX).read_bytes()
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
        for tool in BUSYBOX_TOOLS:
            info = tarfile.TarInfo(f"bin/{tool}")
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, "busybox", 0o777
            tar.addfile(info)
    layer_bytes = layer.getvalue()
    diff_id = hashlib.sha256(layer_bytes).hexdigest()
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Cmd": ["sh"], "Env": ["PATH=/bin"]},
                         "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]}}).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [tag], "Layers": [f"{diff_id}/layer.tar"]}]).encode()
    with tarfile.open(path, "w") as tar:
        for name, blob in ((config_name, config), ("manifest.json", manifest), (f"{diff_id}/layer.tar", layer_bytes)):
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


class TlsDockerd(NamedTuple):
    """A started dockerd serving TLS on 127.0.0.1:`port` (its private unix socket is `dockerd.socket`)."""

    dockerd: Dockerd
    port: int


def start_daemon(root: Path, pki: DaemonPki) -> TlsDockerd:
    """The lab's dockerd with a daemon.json from `tpmtls certs daemon-config` (loopback TCP and the
    lab's private socket); not started yet: `with daemon.dockerd:` starts and stops it."""
    port = free_port()
    conf_dir = root / "daemon-conf"
    conf_dir.mkdir()
    daemon = Dockerd(root, config_file=conf_dir / "daemon.json")
    try:
        tpmtls_cli("certs", "daemon-config", "--cert", str(pki.server_cert), "--key", str(pki.server_key),
                   "--ca", str(pki.ca), "--host", f"tcp://127.0.0.1:{port}", "--socket", str(daemon.socket),
                   "--out", str(conf_dir), env=pki.env)
    except BaseException:
        daemon.stop()  # removes the runtime directory it made
        raise
    return TlsDockerd(daemon, port)


def tls_refused_by(port: int, cert: Path | None, key: Path | None, ca: Path) -> str:
    """Handshake + one request with a software client context; the error text, or '' if served."""
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert is not None and key is not None:
        ctx.load_cert_chain(str(cert), str(key))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                reply = tls.recv(4096)
                return "" if b" 200 " in reply else reply.decode(errors="replace")
    except (ssl.SSLError, OSError) as e:
        return str(e) or type(e).__name__
