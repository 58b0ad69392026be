"""Test infrastructure for the Docker daemon side: certificates made with the tpmtls CLI,
a real `dockerd --config-file daemon.json` listening with TLS on loopback, NGINX in front of
its socket, `tpmtls daemon-proxy` as a process, and a busybox image to run.

Every process is started in its own session, logs to a file in the lab directory and is
stopped by PID (SIGTERM, bounded wait, SIGKILL).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from support.peers import clean_env
from tpmtls.testing import free_port

DOCKER = "/usr/local/bin/docker" if os.path.exists("/usr/local/bin/docker") else "docker"
BUSYBOX = "/bin/busybox"
BUSYBOX_TOOLS = ("sh", "echo", "cat", "sleep", "head", "wc", "true")


def run(argv: list[str], *, env: dict[str, str] | None = None, input: str | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, env=clean_env(env), input=input, timeout=timeout)


def tpmtls_cli(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = run([sys.executable, "-m", "tpmtls", *args], env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"tpmtls {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a command that must fail (no traceback)."""
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def openssl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = run(["openssl", *args])
    if check and proc.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)}: {proc.stderr}")
    return proc


class DaemonPki:
    """What Docker's guide to a TLS-protected daemon makes with openssl, made with tpmtls: a CA, the daemon's server
    certificate (a file key: dockerd cannot use a TPM), a TPM client in DOCKER_CERT_PATH
    layout, a software client for the stock CLI, and a client of a foreign CA."""

    def __init__(self, root: Path, tpm_env: dict[str, str]) -> None:
        self.root, self.env = root, tpm_env
        root.mkdir(parents=True, exist_ok=True)
        self.ca_dir = root / "ca"
        tpmtls_cli("ca", "init", str(self.ca_dir), "--name", "daemon test CA", env=tpm_env)
        self.ca = self.ca_dir / "ca.crt"
        self.server_key, self.server_cert = self.software_pair("server", server=True)
        # the TPM client: key created in the TPM, CSR signed there, laid out by `certs env`
        key, csr, cert = root / "tpm-client.key", root / "tpm-client.csr", root / "tpm-client.crt"
        tpmtls_cli("key", "create", "--alg", "ecc-p256", "--out", str(key), env=tpm_env)
        tpmtls_cli("csr", "--key", str(key), "--subject", "CN=tpm-client", "--out", str(csr), env=tpm_env)
        tpmtls_cli("ca", "issue", str(self.ca_dir), "--csr", str(csr), "--client", "--out", str(cert), env=tpm_env)
        self.tpm_key, self.tpm_cert = key, cert
        self.tpm_dir = root / "tpm-certs"
        self.soft_dir = self._cert_dir("soft-certs", *self.software_pair("soft-client"))
        foreign = root / "foreign-ca"
        tpmtls_cli("ca", "init", str(foreign), "--name", "some other CA", env=tpm_env)
        self.foreign_dir = self._cert_dir("foreign-certs", *self.software_pair("foreign-client", ca_dir=foreign))

    def with_tpm_cert_path(self) -> "DaemonPki":
        """Lay out `tpm_dir` as a DOCKER_CERT_PATH (ca.pem, cert.pem, key.pem = the TPM key file)
        without `certs env` (whose own test lays it out itself)."""
        self.tpm_dir.mkdir()
        for src, name in ((self.ca, "ca.pem"), (self.tpm_cert, "cert.pem"), (self.tpm_key, "key.pem")):
            shutil.copy(src, self.tpm_dir / name)
        return self

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
        d = self.root / name
        d.mkdir()
        shutil.copy(self.ca, d / "ca.pem")
        shutil.copy(cert, d / "cert.pem")
        shutil.copy(key, d / "key.pem")
        return d


class _Process:
    """A child in its own session, logging to `log`, stopped by PID."""

    proc: subprocess.Popen[bytes] | None = None
    returncode: int | None = None
    log: Path

    def _spawn(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        with open(self.log, "ab") as f:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                         env=clean_env(env), start_new_session=True)

    def _failed(self, what: str) -> RuntimeError:
        tail = self.log.read_text(errors="replace")[-1500:] if self.log.exists() else ""
        self.stop()
        return RuntimeError(f"{what}; log {self.log}:\n{tail}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.returncode = self.proc.returncode
        self.proc = None

    def __enter__(self):  # noqa: ANN204 - returns the subclass
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class TlsDockerd(_Process):
    """`dockerd --config-file daemon.json` (from `tpmtls certs daemon-config`) with private roots."""

    def __init__(self, workdir: Path, config: Path, socket_path: Path) -> None:
        self.workdir, self.config, self.socket = workdir, config, socket_path
        self.log = workdir / "dockerd.log"
        # exec-root holds unix sockets (108-byte limit): keep it short
        self.run_dir = Path(tempfile.mkdtemp(prefix="tpd-", dir="/tmp"))
        self._spawn(["dockerd", "--config-file", str(config), "--iptables=false", "--ip6tables=false",
                     "--bridge=none", "--storage-driver=vfs", "--data-root", str(workdir / "data"),
                     "--exec-root", str(self.run_dir / "exec"), "--pidfile", str(self.run_dir / "docker.pid")])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise self._failed("dockerd exited at start")
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(2)
                    s.connect(str(socket_path))
                    s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
                    if b"OK" in s.recv(1024):
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise self._failed("dockerd did not answer /_ping within 60 s")

    @property
    def local_env(self) -> dict[str, str]:
        """The stock CLI on the daemon's own unix socket (for set-up only)."""
        return {"DOCKER_HOST": f"unix://{self.socket}"}

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.run_dir, ignore_errors=True)
        if self.socket.parent.name.startswith("tps-"):  # made by start_daemon for this daemon only
            shutil.rmtree(self.socket.parent, ignore_errors=True)


class Nginx(_Process):
    """`nginx` in the foreground with a config rendered by `tpmtls certs nginx-front`."""

    def __init__(self, workdir: Path, conf: Path, port: int) -> None:
        self.workdir, self.port = workdir, port
        self.log = workdir / "nginx.log"
        (workdir / "logs").mkdir(parents=True, exist_ok=True)
        self._spawn(["nginx", "-p", str(workdir), "-c", str(conf),
                     "-g", f"daemon off; pid {workdir}/nginx.pid; error_log {workdir}/error.log info;"])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise self._failed("nginx exited at start")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise self._failed("nginx did not listen within 20 s")


class ProxyProcess(_Process):
    """`python -m tpmtls daemon-proxy …` as a user runs it; ready once it logs 'listening on'."""

    socket: Path

    def __init__(self, workdir: Path, env: dict[str, str], *args: str) -> None:
        self.log = workdir / f"daemon-proxy-{time.monotonic_ns()}.log"
        self._spawn([sys.executable, "-m", "tpmtls", "daemon-proxy", *args], env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc is not None
            if "listening on" in self.log.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                raise self._failed(f"daemon-proxy exited {self.proc.returncode}")
            time.sleep(0.05)
        raise self._failed("daemon-proxy did not start listening within 60 s")

    def lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()


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


def start_daemon(root: Path, pki: DaemonPki) -> tuple[TlsDockerd, int]:
    """daemon.json from `tpmtls certs daemon-config` (loopback TCP + a private socket), then dockerd."""
    port = free_port()
    sock_dir = Path(tempfile.mkdtemp(prefix="tps-", dir="/tmp"))
    conf_dir = root / "daemon-conf"
    conf_dir.mkdir()
    tpmtls_cli("certs", "daemon-config", "--cert", str(pki.server_cert), "--key", str(pki.server_key),
               "--ca", str(pki.ca), "--host", f"tcp://127.0.0.1:{port}", "--socket", str(sock_dir / "docker.sock"),
               "--out", str(conf_dir), env=pki.env)
    return TlsDockerd(root, conf_dir / "daemon.json", sock_dir / "docker.sock"), port


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
