"""Real components for every test: swtpm + private D-Bus + tpm2-abrmd, started here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tpmtls
from tpmtls.testing import TestTpm


def require(*binaries: str) -> None:
    """Skip only when a binary is genuinely absent (`make setup` installs them all)."""
    for b in binaries:
        if shutil.which(b) is None:
            pytest.skip(f"{b} is not installed (run 'make setup')")


@pytest.fixture(scope="session")
def test_tpm(tmp_path_factory: pytest.TempPathFactory):
    """One software TPM behind tpm2-abrmd for the whole session."""
    require("swtpm", "tpm2-abrmd", "dbus-daemon")
    with TestTpm(tmp_path_factory.mktemp("tpm")) as t:
        yield t


@pytest.fixture
def fresh_tpm(tmp_path: Path):
    """A TPM of the test's own, for tests that kill or reset it."""
    require("swtpm", "tpm2-abrmd", "dbus-daemon")
    with TestTpm(tmp_path / "tpm") as t:
        yield t


@pytest.fixture(scope="session")
def tpm(test_tpm: TestTpm) -> tpmtls.Tpm:
    """The session TPM through a pool of its own."""
    pool = tpmtls.Pool(test_tpm.tcti)
    yield tpmtls.connect(pool=pool)
    pool.close()


class Cli:
    """Runs `python -m tpmtls …` as a user would, with the test TPM in the environment."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env = {**os.environ, **env}
        self.env.pop("OPENSSL_CONF", None)
        self.cwd = cwd

    def __call__(self, *args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "tpmtls", *args],
            cwd=self.cwd,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"tpmtls {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
        for crash in ("Traceback", "Exception ignored", "Fatal Python error"):
            assert crash not in proc.stderr, f"tpmtls {' '.join(args)}: {proc.stderr}"
        return proc

    def fails(self, *args: str, env: dict[str, str] | None = None) -> str:
        """Run a command that must fail: non-zero exit, exactly one line on stderr, no traceback."""
        proc = self(*args, check=False, env=env)
        assert proc.returncode != 0, f"tpmtls {' '.join(args)} succeeded: {proc.stdout}"
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, f"expected one line on stderr, got: {proc.stderr!r}"
        assert "Traceback" not in proc.stderr
        return lines[0]


@pytest.fixture
def cli(test_tpm: TestTpm, tmp_path: Path) -> Cli:
    return Cli(test_tpm.env, tmp_path)


def openssl(*args: str, env: dict[str, str] | None = None, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """The system `openssl` (tpm2-openssl provider available), never with our OPENSSL_CONF."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("OPENSSL_CONF", None)
    proc = subprocess.run(["openssl", *args], env=full_env, capture_output=True, input=input, timeout=120)
    if proc.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} failed: {proc.stderr.decode(errors='replace')}")
    return proc


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory):
    from peers import Pki

    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def tpm_client(tpm, pki):
    """TPM client keys of every algorithm with certificates from the test CA: {alg: (cert, key)}."""
    made = {}
    for alg in ("ecc-p256", "ecc-p384", "rsa2048", "rsa3072"):
        key_path = pki.dir / f"tpm-{alg}.key"
        key = tpm.create_key(alg, key_path)
        made[alg] = (pki.issue(key.public_key(), f"tpm-client-{alg}", f"tpm-{alg}.crt"), key_path)
    return made


@pytest.fixture(scope="session")
def s_server(pki):
    """`openssl s_server -Verify 1 -CAfile ca.crt -www` for the whole session."""
    require("openssl")
    from peers import OpenSSLServer

    with OpenSSLServer(pki) as server:
        yield server


@pytest.fixture(scope="module")
def registry(pki, tmp_path_factory):
    """docker-registry on loopback requiring client certificates from the test CA."""
    require("docker-registry")
    from tpmtls.lab import Registry

    with Registry(pki.server_cert, pki.server_key, pki.ca_file, tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture(scope="module")
def tpm_certs(pki, tpm, tmp_path_factory):
    from registry_env import tpm_cert_dir

    return tpm_cert_dir(tmp_path_factory.mktemp("tpmcerts") / "tpm", pki, tpm)


@pytest.fixture(scope="module")
def soft_certs(pki, tmp_path_factory):
    from registry_env import software_cert_dir

    require("skopeo")
    return software_cert_dir(tmp_path_factory.mktemp("softcerts") / "soft", pki)


@pytest.fixture(scope="module")
def small_image(tmp_path_factory):
    from tpmtls.lab import build_docker_archive

    return build_docker_archive(tmp_path_factory.mktemp("img") / "img.tar",
                                [{"hello": b"hello from tpmtls\n"}, {"data.bin": 2_000_000}, {"etc/motd": b"hi\n"}])


@pytest.fixture(scope="module")
def dockerd(tmp_path_factory):
    require("dockerd", "docker")
    from tpmtls.lab import Dockerd

    with Dockerd(tmp_path_factory.mktemp("dockerd")) as d:
        yield d
