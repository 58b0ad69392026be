"""Enrollment test set-up: machines with EK certificates (tpmtls.lab.ekca) and server files."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import requests

import tpmtls
from tpmtls.lab.ekca import EkCa, ek_machine

__all__ = ["EkCa", "EnrollWorld", "ek_machine", "enroll_files", "enroll_world"]


@dataclass
class EnrollWorld:
    """Machine A with EK certificates from `ek_ca`, and the embedded enroll-server trusting that CA
    (its files under tmp/server: the issuing CA in `ca_dir`, ek-roots.pem, policy.json)."""

    tmp: Path
    tpm: Any
    app: Any
    server: Any
    ca_dir: Path
    ek_ca: EkCa

    def session(self) -> requests.Session:
        """HTTPS to the enroll-server, trusting its CA only."""
        session = requests.Session()
        session.verify = str(self.ca_dir / "ca.crt")
        return session


@contextmanager
def enroll_world(tmp: Path, clock: Callable[[], float] = time.time) -> Iterator[EnrollWorld]:
    """Start machine A (swtpm + EK certificates of a private EK CA) and an enroll-server (on
    `clock`: tests that move time give their own); stop both."""
    from tpmtls.enroll.acme_server import EnrollApp, EnrollServer

    ek_ca = EkCa(tmp / "ekca")
    machine = ek_machine(tmp / "a", ek_ca)
    pool = tpmtls.Pool(machine.tcti)
    try:
        tpm = tpmtls.connect(pool=pool)
        ca_dir, roots, policy = enroll_files(tmp / "server", ek_ca, tpm)
        app = EnrollApp(ca_dir, roots, policy, clock=clock)
        server = EnrollServer(app).start()
        try:
            yield EnrollWorld(tmp, tpm, app, server, ca_dir, ek_ca)
        finally:
            server.stop()
    finally:
        pool.close()
        machine.stop()


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
