"""Enrollment test set-up: machines with EK certificates (tpmtls.enroll.attest_testing) and server files."""

from __future__ import annotations

from pathlib import Path

from tpmtls.enroll.attest_testing import EkCa, ek_machine

__all__ = ["EkCa", "ek_machine", "enroll_files"]


def enroll_files(directory: Path, ek_ca: EkCa, tpm, pcrs: str = "sha256:0,1,2,3,4,5,6,7") -> tuple[Path, Path, Path]:
    """A file CA, the EK roots bundle and a PCR policy recorded from `tpm` (the reference machine)."""
    from tpmtls.enroll.attest_policy import PcrPolicy, parse_selection
    from tpmtls.pki.ca import FileCA
    from tpmtls.tpm.attest import read_pcrs

    directory.mkdir(parents=True, exist_ok=True)
    FileCA.init(directory / "ca", "tpmtls test CA")
    policy = directory / "policy.json"
    policy.write_bytes(PcrPolicy.from_values(read_pcrs(tpm, parse_selection(pcrs))).to_json())
    return directory / "ca", ek_ca.bundle(directory / "ek-roots.pem"), policy
