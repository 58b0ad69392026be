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

__all__ = ["Clock", "EkCa", "EnrollMachine", "EnrollWorld", "busy_limits", "busy_settings", "ek_machine", "enroll_files",
           "enroll_machine", "enroll_world"]


class Clock:
    """A server's clock, moved forward by tests instead of sleeping."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        import time

        return time.time() + self.offset


@dataclass
class EnrollMachine:
    """Machine A (EK certificates of a private EK CA) and the server files trusting it; no server."""

    machine: Any
    tpm: Any
    ca_dir: Path
    roots: Path
    policy: Path

    @property
    def files(self) -> tuple[Path, Path, Path]:
        return self.ca_dir, self.roots, self.policy

    @property
    def server_args(self) -> list[str]:
        return ["--ca", str(self.ca_dir), "--ek-roots", str(self.roots), "--policy", str(self.policy)]


@contextmanager
def enroll_machine(tmp: Path) -> Iterator[EnrollMachine]:
    """Start machine A and write the server files (CA, EK roots, policy from A); stop A afterwards."""
    ek_ca = EkCa(tmp / "ekca")
    machine = ek_machine(tmp / "a", ek_ca)
    pool = tpmtls.Pool(machine.tcti)
    try:
        tpm = tpmtls.connect(pool=pool)
        yield EnrollMachine(machine, tpm, *enroll_files(tmp / "server", ek_ca, tpm))
    finally:
        pool.close()
        machine.stop()


def busy_settings(**changes: Any) -> Any:
    """Server settings for a suite whose every client is 127.0.0.1: per-client rates a fleet spreads over
    many addresses, raised so that only the tests about limits meet them."""
    from tpmtls.enroll.acme_server import Settings
    from tpmtls.enroll.ratelimit import Rate

    return Settings(**{"new_accounts": Rate(1000.0, 10000), "attestations": Rate(1000.0, 10000), **changes})


def busy_limits(**changes: Any) -> Any:
    """Front limits likewise raised for one loopback client (see busy_settings)."""
    from tpmtls.enroll.ratelimit import Rate
    from tpmtls.enroll.serve import Limits

    return Limits(**{"requests": Rate(1000.0, 10000), **changes})


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
        app = EnrollApp(ca_dir, roots, policy, clock=clock, settings=busy_settings())
        server = EnrollServer(app, limits=busy_limits()).start()
        try:
            yield EnrollWorld(tmp, tpm, app, server, ca_dir, ek_ca)
        finally:
            server.stop()
            app.close()
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
