"""Real components for every test: swtpm + private D-Bus + tpm2-abrmd, started here; the test
PKI, openssl s_server, docker-registry and a private dockerd for the layers that share them."""

from __future__ import annotations

from pathlib import Path

import pytest

import tpmtls
from support.commands import Cli, require
from tpmtls.testing import TestTpm


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


@pytest.fixture
def cli(test_tpm: TestTpm, tmp_path: Path) -> Cli:
    """`python -m tpmtls …` on the session TPM, in the test's temp dir."""
    return Cli(test_tpm.env, tmp_path)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory):
    """The test CA (software key) with a server certificate for localhost/127.0.0.1."""
    from support.peers import Pki

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
    from support.peers import OpenSSLServer

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
    """A certs.d directory whose client.key is a TPM key, certified by the test CA."""
    from support.registry import tpm_cert_dir

    return tpm_cert_dir(tmp_path_factory.mktemp("tpmcerts") / "tpm", pki, tpm)


@pytest.fixture(scope="module")
def soft_certs(pki, tmp_path_factory):
    """A certs.d directory with a software client key (for skopeo)."""
    from support.registry import software_cert_dir

    require("skopeo")
    return software_cert_dir(tmp_path_factory.mktemp("softcerts") / "soft", pki)


@pytest.fixture(scope="module")
def small_image(tmp_path_factory):
    """A three-layer docker-archive (about 2 MB)."""
    from tpmtls.lab import build_docker_archive

    return build_docker_archive(tmp_path_factory.mktemp("img") / "img.tar",
                                [{"hello": b"hello from tpmtls\n"}, {"data.bin": 2_000_000}, {"etc/motd": b"hi\n"}])


@pytest.fixture(scope="module")
def dockerd(tmp_path_factory):
    """A private dockerd (the lab's) on a unix socket: images in and out, no TLS."""
    require("dockerd", "docker")
    from tpmtls.lab import Dockerd

    with Dockerd(tmp_path_factory.mktemp("dockerd")) as d:
        yield d


# ---- TPM paths: tpm2-abrmd and the /dev/tpmrm0 stand-in (docs/tpm-device.md) ------------------
# The core of the suite runs on both: `any_tpm` / `any_fresh_tpm` / `path_client` take the
# param "tabrmd" (TestTpm) or "device" (DeviceTpm: swtpm behind a FUSE file that behaves
# like the kernel's /dev/tpmrm0, tpmtls's default TCTI). Both have .tcti, .env, .swtpm.
TPM_PATHS = ("tabrmd", "device")


@pytest.fixture(scope="session")
def device_tpm(tmp_path_factory: pytest.TempPathFactory):
    """One software TPM behind the /dev/tpmrm0 stand-in for the whole session."""
    from support.device import require_device

    require_device()
    from tpmtls.lab.tpmrm import DeviceTpm

    with DeviceTpm(tmp_path_factory.mktemp("device")) as t:
        yield t


@pytest.fixture
def fresh_device_tpm(tmp_path: Path):
    """A /dev/tpmrm0 stand-in and TPM of the test's own, for tests that stop, kill or reset it."""
    from support.device import require_device

    require_device()
    from tpmtls.lab.tpmrm import DeviceTpm

    with DeviceTpm(tmp_path / "device") as t:
        yield t


@pytest.fixture(params=TPM_PATHS)
def any_tpm(request: pytest.FixtureRequest):
    """The session TPM through each path: tpm2-abrmd, then /dev/tpmrm0."""
    return request.getfixturevalue("test_tpm" if request.param == "tabrmd" else "device_tpm")


@pytest.fixture(params=TPM_PATHS)
def any_fresh_tpm(request: pytest.FixtureRequest):
    """A TPM of the test's own through each path."""
    return request.getfixturevalue("fresh_tpm" if request.param == "tabrmd" else "fresh_device_tpm")


@pytest.fixture(scope="session")
def _path_clients() -> dict[str, dict[str, tuple[Path, Path]]]:
    return {}


@pytest.fixture
def path_client(any_tpm, pki, _path_clients) -> dict[str, tuple[Path, Path]]:
    """ECC P-256 and RSA-2048 client keys made on `any_tpm`'s TPM, with certificates: {alg: (cert, key)}."""
    made = _path_clients.get(any_tpm.tcti)
    if made is None:
        made, n = {}, len(_path_clients)
        tpm = tpmtls.connect(any_tpm.tcti)
        for alg in ("ecc-p256", "rsa2048"):
            key = tpm.create_key(alg, pki.dir / f"path{n}-{alg}.key")
            made[alg] = (pki.issue(key.public_key(), f"tpm-client-{alg}", f"path{n}-{alg}.crt"), pki.dir / f"path{n}-{alg}.key")
        _path_clients[any_tpm.tcti] = made
    return made
# ---- end of TPM paths ----------------------------------------------------------------------


#: Fixtures that start a dockerd. It needs root, writes /etc/docker/key.json on its first start
#: (dockerd 20.10's trust key) and makes cgroups and mounts for its containers: every test that
#: uses one is a `machine` test, marked here so that a new test cannot forget it.
DOCKERD_FIXTURES = frozenset({"dockerd", "tls_dockerd"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if DOCKERD_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.machine)
