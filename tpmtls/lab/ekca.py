"""Software TPMs with EK certificates, for enrollment tests and benchmarks (swtpm + private swtpm_localca).

Each `EkCa` is a stand-in TPM manufacturer: its own swtpm-localca.conf/.options and
swtpm_setup.conf in a directory of yours (never the machine's /var/lib/swtpm-localca).
`ek_machine` manufactures a TPM state with it (`swtpm_setup --create-ek-cert
--create-platform-cert`: RSA-2048 and ECC EKs with certificates in NV), then runs
swtpm + tpm2-abrmd on that state (`TestTpm`).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from .stack import TestTpm


class EkCa:
    """A private swtpm_localca: its root and intermediate sign the EK certificates of our swtpms."""

    def __init__(self, directory: Path, manufacturer: str = "tpmtls-test") -> None:
        self.dir = directory
        state = directory / "state"
        state.mkdir(parents=True, exist_ok=True)
        (directory / "swtpm-localca.conf").write_text(
            f"statedir = {state}\nsigningkey = {state}/signkey.pem\n"
            f"issuercert = {state}/issuercert.pem\ncertserial = {state}/certserial\n"
        )
        (directory / "swtpm-localca.options").write_text(
            f"--platform-manufacturer {manufacturer}\n--platform-version 2.1\n--platform-model test\n"
        )
        (directory / "swtpm_setup.conf").write_text(
            "create_certs_tool = /usr/bin/swtpm_localca\n"
            f"create_certs_tool_config = {directory}/swtpm-localca.conf\n"
            f"create_certs_tool_options = {directory}/swtpm-localca.options\n"
            "active_pcr_banks = sha256\n"
        )

    def manufacture(self, state_dir: Path) -> None:
        """Write a fresh TPM state with RSA and ECC EKs and their certificates into `state_dir`."""
        state_dir.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            ["swtpm_setup", "--tpm2", "--tpmstate", str(state_dir), "--create-ek-cert", "--create-platform-cert",
             "--config", str(self.dir / "swtpm_setup.conf"), "--overwrite"],
            capture_output=True, text=True, timeout=120,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"swtpm_setup failed: {proc.stdout[-2000:]} {proc.stderr[-2000:]}")

    def bundle(self, path: Path) -> Path:
        """The EK roots bundle a verifier trusts: this CA's root and intermediate."""
        state = self.dir / "state"
        path.write_bytes((state / "swtpm-localca-rootca-cert.pem").read_bytes() + (state / "issuercert.pem").read_bytes())
        return path


def ek_machine(workdir: Path, ca: EkCa) -> TestTpm:
    """A started TestTpm whose state was manufactured by `ca` (caller stops it)."""
    ca.manufacture(workdir / "swtpm" / "state")
    return TestTpm(workdir).start()

__all__ = ["EkCa", "ek_machine"]
