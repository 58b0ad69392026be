"""Keys with a password: sign with the right one, a clear error otherwise; DA-protected."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from tpm2_pytss.constants import TPMA_OBJECT

import tpmtls
from support.commands import Cli, require


def test_password_key_signs_only_with_its_password(tpm, tmp_path: Path):
    path = tmp_path / "pw.key"
    created = tpm.create_key("ecc-p256", path, password="correct horse")
    assert not created.attributes & TPMA_OBJECT.NODA  # a password is worth protecting from guessing

    key = tpm.load_key(path, password="correct horse")
    sig = key.sign(b"m", ec.ECDSA(hashes.SHA256()))
    key.public_key().verify(sig, b"m", ec.ECDSA(hashes.SHA256()))

    with pytest.raises(tpmtls.KeyAuthError, match="needs|has a password"):
        tpm.load_key(path)
    with pytest.raises(tpmtls.KeyAuthError, match=r"pw\.key: wrong password"):
        tpm.load_key(path, password="wrong")
    # the right password still works after a wrong one (same key, other object)
    tpm.load_key(path, password="correct horse").sign(b"m", ec.ECDSA(hashes.SHA256()))


def test_passwordless_keys_are_noda(tpm):
    assert tpm.create_key("rsa2048").attributes & TPMA_OBJECT.NODA


def test_cli_password_file(cli, tmp_path: Path):
    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "bad").write_text("nope\n")
    cli("key", "create", "--alg", "rsa2048", "--out", "pw.key", "--password-file", "pw")
    assert "password: yes" in cli("key", "show", "pw.key").stdout
    cli("csr", "--key", "pw.key", "--subject", "CN=pw", "--out", "ok.csr", "--password-file", "pw")

    line = cli.fails("csr", "--key", "pw.key", "--subject", "CN=pw", "--out", "no.csr")
    assert "pw.key" in line and "password" in line
    line = cli.fails("csr", "--key", "pw.key", "--subject", "CN=pw", "--out", "bad.csr", "--password-file", "bad")
    assert "pw.key: wrong password" in line and "rc 0x" in line
    line = cli.fails("csr", "--key", "pw.key", "--subject", "CN=pw", "--out", "bad.csr", "--password-file", "missing")
    assert "missing" in line
    # a password for a key that has none is said as such, not as a wrong one
    cli("key", "create", "--alg", "ecc-p256", "--out", "open.key")
    line = cli.fails("csr", "--key", "open.key", "--subject", "CN=open", "--out", "bad.csr", "--password-file", "pw")
    assert line.endswith("open.key: this key has no password, but one was given: leave out --password-file "
                         "(password=)"), line
    assert not (tmp_path / "no.csr").exists() and not (tmp_path / "bad.csr").exists()


def test_a_key_file_from_tpm2_encodeobject_without_p_takes_the_empty_password(tmp_path: Path):
    """tpm2-tools' tpm2_encodeobject without -p marks the key as having a password (emptyAuth
    absent) though its auth is empty; tpm2-openssl takes the empty password for it, and so do
    we: an empty --password-file signs, none given says how to give one."""
    require("tpm2_createprimary", "tpm2_create", "tpm2_encodeobject")
    from tpmtls.testing import TestTpm
    from tpmtls.tpm.keyfile import read_key_reference

    with TestTpm(tmp_path / "tpm") as own:  # tpm2-tools leave transient objects behind: a TPM of its own
        env = {**os.environ, **own.env, "TPM2TOOLS_TCTI": own.tcti}
        for argv in (["tpm2_createprimary", "-C", "o", "-g", "sha256", "-G", "ecc256:aes128cfb", "-a",
                      "restricted|decrypt|fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda", "-c", "srk.ctx"],
                     ["tpm2_create", "-C", "srk.ctx", "-G", "ecc256:ecdsa-sha256", "-u", "k.pub", "-r", "k.priv",
                      "-a", "sign|fixedtpm|fixedparent|sensitivedataorigin|userwithauth"],
                     ["tpm2_encodeobject", "-C", "srk.ctx", "-u", "k.pub", "-r", "k.priv", "-o", "k.pem"]):
            subprocess.run(argv, cwd=tmp_path, env=env, check=True, capture_output=True, timeout=60)
        assert not read_key_reference(str(tmp_path / "k.pem")).empty_auth  # "has a password"

        with pytest.raises(tpmtls.KeyAuthError, match="--password-file"):
            tpmtls.connect(own.tcti).load_key(tmp_path / "k.pem")
        key = tpmtls.connect(own.tcti).load_key(tmp_path / "k.pem", password=b"")
        key.public_key().verify(key.sign(b"m", ec.ECDSA(hashes.SHA256())), b"m", ec.ECDSA(hashes.SHA256()))

        cli = Cli(own.env, tmp_path)
        (tmp_path / "empty").write_bytes(b"")
        line = cli.fails("csr", "--key", "k.pem", "--subject", "CN=enc", "--out", "no.csr")
        assert "k.pem: this key has a password" in line and "--password-file" in line
        cli("csr", "--key", "k.pem", "--subject", "CN=enc", "--out", "ok.csr", "--password-file", "empty")
        assert (tmp_path / "ok.csr").read_bytes().startswith(b"-----BEGIN CERTIFICATE REQUEST-----")
