"""Persistent keys: handles, the handle-form key file, and a persistent SRK at 0x81000001."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from tpm2_pytss.constants import ESYS_TR
from tpm2_pytss.types import TPM2B_PUBLIC, TPM2B_SENSITIVE_CREATE

import tpmtls
from support.commands import require
from tpmtls.testing import SwTpm
from tpmtls.tpm.templates import SRK_ECC


def evict(test_tpm, handle: str) -> None:
    require("tpm2_evictcontrol")
    subprocess.run(["tpm2_evictcontrol", "-T", test_tpm.tcti, "-C", "o", "-c", handle],
                   env={**test_tpm.env}, check=True, capture_output=True, timeout=30)


def test_persist_and_use_by_handle(cli, test_tpm, tpm, tmp_path: Path):
    cli("key", "create", "--alg", "ecc-p256", "--out", "k.key")
    out = cli("key", "persist", "k.key", "0x81000020", "--out", "k.handle")
    try:
        assert "handle:0x81000020" in out.stdout
        assert (tmp_path / "k.handle").read_text().startswith("-----BEGIN TPMTLS KEY HANDLE-----")
        for ref in (tmp_path / "k.handle", "handle:0x81000020"):
            key = tpm.load_key(ref)
            sig = key.sign(b"m", ec.ECDSA(hashes.SHA256()))
            key.public_key().verify(sig, b"m", ec.ECDSA(hashes.SHA256()))
        assert "persistent handle 0x81000020" in cli("key", "show", "k.handle").stdout
        assert "already in use" in cli.fails("key", "persist", "k.key", "0x81000020")
    finally:
        evict(test_tpm, "0x81000020")


def test_handle_file_refuses_another_key_at_its_handle(cli, test_tpm, tmp_path: Path):
    cli("key", "create", "--out", "a.key")
    cli("key", "create", "--out", "b.key")
    cli("key", "persist", "a.key", "0x81000021", "--out", "a.handle")
    evict(test_tpm, "0x81000021")
    cli("key", "persist", "b.key", "0x81000021")
    try:
        line = cli.fails("csr", "--key", "a.handle", "--subject", "CN=x", "--out", "x.csr")
        assert "a.handle" in line and "not the one this file was made for" in line
    finally:
        evict(test_tpm, "0x81000021")


def test_persistent_srk_is_used_instead_of_createprimary(tmp_path: Path):
    """TCG provisioning puts the SRK at 0x81000001; same template ⇒ same key, no CreatePrimary."""
    require("swtpm")
    with SwTpm(tmp_path / "sw") as sw:
        pool = tpmtls.Pool(sw.tcti)
        try:
            key = tpmtls.connect(pool=pool).create_key("ecc-p256", tmp_path / "k.key")

            def persist_srk(ctx):
                handle, *_ = ctx.esapi.create_primary(TPM2B_SENSITIVE_CREATE(), TPM2B_PUBLIC(publicArea=SRK_ECC))
                ctx.esapi.evict_control(ESYS_TR.RH_OWNER, handle, 0x81000001)
                ctx.esapi.flush_context(handle)

            pool.run("persist SRK", persist_srk)
        finally:
            pool.close()

        pool = tpmtls.Pool(sw.tcti)
        try:
            key = tpmtls.connect(pool=pool).load_key(tmp_path / "k.key")
            sig = key.sign(b"m", ec.ECDSA(hashes.SHA256()))
            key.public_key().verify(sig, b"m", ec.ECDSA(hashes.SHA256()))
            assert pool.stats().primaries == 0
        finally:
            pool.close()


@pytest.mark.parametrize("handle", ["0x81000001"])
def test_key_reference_parsing(handle):
    from tpmtls.tpm.keyfile import handle_pem, parse_handle, parse_key_bytes

    blob = parse_key_bytes(handle_pem(int(handle, 16), b"\x00\x0bname"), "h.pem")
    assert blob.handle == parse_handle(handle) and blob.name == b"\x00\x0bname"
