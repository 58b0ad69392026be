"""What every benchmark needs, started here and stopped by PID: a software TPM behind
tpm2-abrmd or the /dev/tpmrm0 stand-in, a CA, TPM and software client keys with
certificates, an `openssl s_server`."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import tpmtls
from tpmtls.pki.ca import FileCA
from tpmtls.pki.csr import build_csr
from tpmtls.testing import TestTpm, TpmTiming, free_port

ALGS = ("ecc-p256", "ecc-p384", "rsa2048", "rsa3072")
TPM_PATHS = ("tabrmd", "device")  # tpm2-abrmd, or /dev/tpmrm0 (the lab's stand-in for the kernel's resource manager)
COUNT_ONLY = TpmTiming(durations={}, other=0.0)  # a forwarder that counts TPM commands and delays none


class Lab:
    def __init__(self, work: Path, stack: ExitStack, timing: TpmTiming | None = None, tpm_path: str = "tabrmd",
                 count: bool = False) -> None:
        """`timing`: a hardware TPM's pace (a forwarder in front of swtpm; see tpmtls.testing).

        `tpm_path`: "tabrmd" or "device". `count`: count TPM commands even at swtpm speed.
        """
        self.work = work
        self.tpm_path = tpm_path
        self.timing_modelled = timing is not None  # a hardware pace, not just counting
        timing = timing or (COUNT_ONLY if count else None)
        if tpm_path == "device":
            from tpmtls.lab.tpmrm import DeviceTpm

            self.tpm: Any = stack.enter_context(DeviceTpm(work / "tpm", timing=timing))
        else:
            self.tpm = stack.enter_context(TestTpm(work / "tpm", timing=timing))
        self.ca = FileCA.init(work / "ca", "tpmtls benchmark CA")
        server_key = ec.generate_private_key(ec.SECP256R1())
        self.server_key = self._write_key("server.key", server_key)
        self.server_cert = self._write_cert("server.crt", self.ca.issue(
            build_csr(server_key, "CN=localhost"), server=True, sans=["DNS:localhost,IP:127.0.0.1"]))
        self._servers: list[subprocess.Popen[bytes]] = []
        stack.callback(self.stop_servers)

    def _write_key(self, name: str, key: Any) -> Path:
        path = self.work / name
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        return path

    def _write_cert(self, name: str, cert: Any) -> Path:
        path = self.work / name
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    def client(self, alg: str, kind: str) -> tuple[Path, Path]:
        """(cert, key) for a TPM key ('tpm') or a software key of the same algorithm ('software')."""
        cert, key = self.work / f"{kind}-{alg}.crt", self.work / f"{kind}-{alg}.key"
        if cert.exists():
            return cert, key
        if kind == "tpm":
            k: Any = tpmtls.connect(self.tpm.tcti).create_key(alg, key)
        else:
            k = (rsa.generate_private_key(65537, int(alg[3:])) if alg.startswith("rsa")
                 else ec.generate_private_key(ec.SECP256R1() if alg == "ecc-p256" else ec.SECP384R1()))
            self._write_key(key.name, k)
        self._write_cert(cert.name, self.ca.issue(build_csr(k, f"CN={kind}-{alg}")))
        return cert, key

    def cert_dirs(self, alg: str = "ecc-p256") -> dict[str, Path]:
        """{"tpm": DIR, "software": DIR}: certs.d-style directories (ca.crt, client.cert, client.key)
        for a TPM client and a software one, for tpmtls-push and skopeo side by side."""
        dirs = {}
        for kind in ("tpm", "software"):
            cert, key = self.client(alg, kind)
            d = dirs[kind] = self.work / f"certs-{kind}"
            d.mkdir(exist_ok=True)
            shutil.copy(self.ca.cert_path, d / "ca.crt")
            shutil.copy(cert, d / "client.cert")
            shutil.copy(key, d / "client.key")
        return dirs

    def s_server(self) -> int:
        """`openssl s_server -Verify 1 -www` in its own process (no GIL shared with the clients)."""
        port = free_port()
        log = open(self.work / f"s_server-{port}.log", "wb")
        env = {k: v for k, v in os.environ.items() if k != "OPENSSL_CONF"}
        proc = subprocess.Popen(
            ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(self.server_cert), "-key",
             str(self.server_key), "-CAfile", str(self.ca.cert_path), "-Verify", "1", "-verify_return_error",
             "-www", "-naccept", "100000000"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, start_new_session=True)
        self._servers.append(proc)
        deadline = time.monotonic() + 10
        while b"ACCEPT" not in (self.work / f"s_server-{port}.log").read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("openssl s_server did not start")
            time.sleep(0.02)
        return port

    def stop_servers(self) -> None:
        for proc in self._servers:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)

    def tpm_commands(self) -> dict[str, int]:
        """TPM commands so far by name (counted at the forwarder); empty without one."""
        return dict(self.tpm.latency.counts) if self.tpm.latency is not None else {}

    def tpm_busy(self) -> float:
        """Seconds the TPM spent on commands so far (modelled durations included)."""
        return self.tpm.latency.busy if self.tpm.latency is not None else 0.0

    def worker_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "OPENSSL_CONF"}
        return {**env, **self.tpm.env}


def per_signature(lab: Lab, commands_before: dict[str, int], busy_before: float, signatures: int) -> dict[str, Any]:
    """TPM commands and TPM time per signature since a snapshot (None without a counting forwarder)."""
    if lab.tpm.latency is None or not signatures:
        return {"tpm_commands_per_signature": None, "tpm_ms_per_signature": None}
    spent = {k: v - commands_before.get(k, 0) for k, v in lab.tpm_commands().items() if v - commands_before.get(k, 0)}
    return {"tpm_commands": spent, "tpm_commands_per_signature": round(sum(spent.values()) / signatures, 2),
            "tpm_ms_per_signature": round((lab.tpm_busy() - busy_before) / signatures * 1000, 1)}


def tpm_description(tpm_path: str) -> str:
    if tpm_path == "device":
        return "swtpm behind the /dev/tpmrm0 stand-in (FUSE, the kernel's resource manager modelled)"
    return "swtpm behind tpm2-abrmd (private D-Bus)"


def environment() -> dict[str, Any]:
    """What the numbers were measured on."""
    import ssl

    from cryptography.hazmat.backends.openssl import backend

    return {
        "machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "system_openssl": ssl.OPENSSL_VERSION, "cryptography_openssl": backend.openssl_version_text(),
        "tpm": {path: tpm_description(path) for path in TPM_PATHS}, "server": "openssl s_server -www (separate process)",
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "argv": sys.argv[1:],
    }
