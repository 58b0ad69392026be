"""The Docker daemon side's real components: certificates made with the tpmtls CLI and a
dockerd --tlsverify started from the daemon.json `tpmtls certs daemon-config` wrote."""

from __future__ import annotations

from typing import Iterator

import pytest

from support.commands import require
from support.daemon import DOCKER, DaemonPki, TlsDockerd, busybox_archive, run, start_daemon


@pytest.fixture(scope="session")
def daemon_pki(test_tpm, tmp_path_factory) -> DaemonPki:
    """The daemon's CA and server certificate, a TPM client with its DOCKER_CERT_PATH, a software
    client and one of a foreign CA (`DaemonPki`); read-only for the tests, so made once."""
    require("openssl")
    return DaemonPki(tmp_path_factory.mktemp("daemon-pki"), test_tpm.env)


@pytest.fixture(scope="module")
def tls_dockerd(daemon_pki, tmp_path_factory) -> Iterator[TlsDockerd]:
    """A dockerd --tlsverify on a loopback port trusting `daemon_pki`'s CA; one per module."""
    require("dockerd", "docker")
    daemon = start_daemon(tmp_path_factory.mktemp("dockerd-tls"), daemon_pki)
    with daemon.dockerd:
        yield daemon


@pytest.fixture(scope="module")
def busybox_image(tls_dockerd, tmp_path_factory) -> str:
    """busybox-tpmtls:1 (the static Debian busybox) loaded into `tls_dockerd`, to run containers."""
    archive = busybox_archive(tmp_path_factory.mktemp("busybox") / "busybox.tar")
    loaded = run([DOCKER, "load", "-i", str(archive)], env=tls_dockerd.dockerd.env)
    assert loaded.returncode == 0, loaded.stderr
    return "busybox-tpmtls:1"
