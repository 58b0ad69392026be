"""`tpmtls doctor` reports a working TPM, and fails in one line when there is none."""

from __future__ import annotations

from tpmtls.testing import free_port


def test_doctor_ok(cli, test_tpm):
    out = cli("doctor").stdout
    assert f"TCTI: {test_tpm.tcti} (from $TPMTLS_TCTI)" in out
    assert "TPM: ok: IBM" in out
    assert "keys: ok: created an ECC P-256 key" in out
    assert "provider in cryptography's OpenSSL 4" in out and "loaded (pyOpenSSL can use TPM keys)" in out
    assert "provider in system OpenSSL 3" in out and "loaded (stdlib ssl" in out


def test_doctor_without_tpm(cli):
    tcti = f"swtpm:host=127.0.0.1,port={free_port(2)}"
    line = cli.fails("doctor", "--tcti", tcti)
    assert "cannot reach the TPM" in line
