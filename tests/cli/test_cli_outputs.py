"""Output paths, outputs that are inputs, import edge cases, CA checks.

Every failure is one line, exit 1, and leaves the TPM and the files as they were.
`/sys` stands in for a read-only directory: even root cannot create files there."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, x25519

RO = "/sys/tpmtls-out.pem"


def fails_1(cli, *args: str) -> str:
    proc = cli(*args, check=False)
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.fixture
def made(cli, tmp_path):
    cli("key", "create", "--out", "k.key")
    cli("csr", "--key", "k.key", "--subject", "CN=n", "--out", "n.csr")
    cli("ca", "init", "ca", "--name", "CA")
    return tmp_path


@pytest.mark.parametrize("where", ["dir", "ro", "missing"])
def test_output_paths_are_one_line(where, cli, made, tmp_path):
    out = {"dir": str(tmp_path), "ro": RO, "missing": str(tmp_path / "no" / "such" / "x.pem")}[where]
    words = {"dir": "is a directory", "ro": "cannot write", "missing": "does not exist"}[where]
    software = tmp_path / "soft.pem"
    software.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    for args in (["key", "create", "--out", out], ["key", "import", str(software), "--out", out],
                 ["csr", "--key", "k.key", "--subject", "CN=x", "--out", out],
                 ["ca", "issue", "ca", "--csr", "n.csr", "--client", "--out", out]):
        line = fails_1(cli, *args, "--force")
        assert words in line, (args, line)


def test_ca_init_into_unwritable_places(cli, tmp_path):
    (tmp_path / "afile").write_text("x\n")
    assert "cannot create" in fails_1(cli, "ca", "init", "afile/ca", "--name", "CA")
    assert "cannot" in fails_1(cli, "ca", "init", "/sys/tpmtls-ca", "--name", "CA")


def test_persist_checks_its_output_before_the_tpm(cli, made, tmp_path):
    handle = "0x81000a17"
    line = fails_1(cli, "key", "persist", "k.key", handle, "--out", RO)
    assert "cannot write" in line
    # the TPM was not touched: persisting now works (no "in use")
    out = cli("key", "persist", "k.key", handle, "--out", "h.pem").stdout
    assert "persisted" in out  # (the handle stays in this test TPM; no other test uses it)


def test_output_that_is_an_input_is_refused_even_with_force(cli, made, tmp_path):
    before = (tmp_path / "k.key").read_bytes()
    line = fails_1(cli, "csr", "--key", "k.key", "--subject", "CN=x", "--out", "k.key", "--force")
    assert "is also an input" in line
    assert (tmp_path / "k.key").read_bytes() == before
    pem = tmp_path / "x.pem"
    pem.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    original = pem.read_bytes()
    assert "is also an input" in fails_1(cli, "key", "import", "x.pem", "--out", "x.pem", "--force")
    assert pem.read_bytes() == original
    assert "is also an input" in fails_1(cli, "ca", "issue", "ca", "--csr", "n.csr", "--client", "--out", "n.csr",
                                         "--force")


def _pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.mark.parametrize("name, make, words", [
    ("ed25519", lambda: ed25519.Ed25519PrivateKey.generate(), "Ed25519 keys cannot go into a TPM"),
    ("x25519", lambda: x25519.X25519PrivateKey.generate(), "X25519 keys cannot go into a TPM"),
    ("rsa1024", lambda: rsa.generate_private_key(65537, 1024), "too weak"),
    ("rsa4096", lambda: rsa.generate_private_key(65537, 4096), "RSA 2048/3072"),
    ("rsa-e3", lambda: rsa.generate_private_key(3, 2048), "e=3"),
    ("secp521", lambda: ec.generate_private_key(ec.SECP521R1()), "P-256/P-384"),
])
def test_import_edge_cases(name, make, words, cli, tmp_path):
    (tmp_path / f"{name}.pem").write_bytes(_pem(make()))
    line = fails_1(cli, "key", "import", f"{name}.pem", "--out", f"{name}.key")
    assert words in line and f"{name}.pem" in line
    assert not (tmp_path / f"{name}.key").exists()


def test_ca_checks(cli, made, tmp_path):
    assert "common name" in fails_1(cli, "ca", "init", "ca2", "--name", "")
    assert "is a directory" in fails_1(cli, "ca", "issue", "ca", "--csr", str(tmp_path), "--client", "--out", "c.crt")
    # a CA directory whose key is not its certificate's
    cli("ca", "init", "other", "--name", "Other")
    (tmp_path / "ca" / "ca.key").write_bytes((tmp_path / "other" / "ca.key").read_bytes())
    line = fails_1(cli, "ca", "issue", "ca", "--csr", "n.csr", "--client", "--out", "c.crt")
    assert "does not belong" in line
    # a CSR whose signature does not verify is named
    cli("ca", "init", "good", "--name", "Good")
    data = bytearray((tmp_path / "n.csr").read_bytes())
    from cryptography import x509

    csr = x509.load_pem_x509_csr(bytes(data))
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01  # inside the signature
    import base64

    (tmp_path / "bad.csr").write_text("-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(bytes(der)).decode()
                                      + "-----END CERTIFICATE REQUEST-----\n")
    line = fails_1(cli, "ca", "issue", "good", "--csr", "bad.csr", "--client", "--out", "c.crt")
    assert "bad.csr" in line


@pytest.fixture
def full_dir(tmp_path):
    """A tiny tmpfs, filled: writes there fail with ENOSPC (a full disk)."""
    import subprocess

    target = tmp_path / "full"
    target.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(target)], check=True)
    try:
        with open(target / "filler", "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 1024)
            except OSError:
                pass
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True)


def test_full_disk_is_one_line_and_persist_rolls_back(cli, made, full_dir):
    for args in (["key", "create", "--out", str(full_dir / "k2.key")],
                 ["csr", "--key", "k.key", "--subject", "CN=x", "--out", str(full_dir / "x.csr")],
                 ["ca", "issue", "ca", "--csr", "n.csr", "--client", "--out", str(full_dir / "c.crt")]):
        line = fails_1(cli, *args)
        assert "No space left on device" in line, (args, line)
    handle = "0x81000a18"
    line = fails_1(cli, "key", "persist", "k.key", handle, "--out", str(full_dir / "h.pem"))
    assert "No space left on device" in line and "was not left" in line
    assert "persisted" in cli("key", "persist", "k.key", handle).stdout  # the handle was free again
    assert [p.name for p in full_dir.iterdir()] == ["filler"]  # no temp files left
