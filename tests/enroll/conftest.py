"""Enrollment's real components: machines with EK certificates from a private EK CA, the
enroll-server trusting them, and the client store pairing starts from."""

from __future__ import annotations

from typing import Iterator

import pytest

from support.attest import EnrollWorld, enroll_world
from support.commands import require
from support.daemon import tpmtls_cli
from tpmtls.enroll.store import CertificateStore


@pytest.fixture(scope="module")
def enroll_server(tmp_path_factory) -> Iterator[EnrollWorld]:
    """Machine A (swtpm with EK certificates) and an in-process enroll-server trusting its EK CA;
    one per module."""
    require("swtpm", "swtpm_setup", "swtpm_localca", "tpm2-abrmd")
    with enroll_world(tmp_path_factory.mktemp("enroll-server")) as world:
        yield world


@pytest.fixture
def pairing_store(test_tpm, tmp_path):
    """(store, state): a client CertificateStore with its CA (`tpmtls ca init`), and an empty
    0700 state directory for the enroll-agent."""
    store = CertificateStore(tmp_path / "store")
    tpmtls_cli("ca", "init", str(store.ca_dir), "--name", "pairing CA", env=test_tpm.env)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    return store, state
