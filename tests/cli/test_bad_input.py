"""Bad input: one clear line naming the culprit, a non-zero exit, and nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tpmtls.testing import free_port


@pytest.fixture
def files(cli, tmp_path: Path) -> Path:
    cli("key", "create", "--out", "good.key")
    good = (tmp_path / "good.key").read_text()
    (tmp_path / "empty.key").write_text("")
    (tmp_path / "truncated.key").write_text(good[: len(good) // 2])
    body = good.splitlines()
    (tmp_path / "corrupt.key").write_text("\n".join([body[0], "AAAA" + body[1][4:], *body[2:]]) + "\n")
    soft = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "software.key").write_bytes(
        soft.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (tmp_path / "cert.pem").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    return tmp_path


@pytest.mark.parametrize(
    "keyfile, expected",
    [
        ("empty.key", "empty.key: file is empty"),
        ("truncated.key", "truncated.key: truncated PEM"),
        ("corrupt.key", "corrupt.key: damaged TSS2 PRIVATE KEY"),
        ("software.key", "software.key: holds a software key (PEM 'PRIVATE KEY')"),
        ("cert.pem", "cert.pem: PEM label 'CERTIFICATE' is not a key"),
        ("missing.key", "missing.key: no such key file"),
        ("handle:0x81000123", "no key at persistent handle 0x81000123"),
        ("handle:0x80000001", "is not a persistent handle"),
        ("handle:banana", "is not a TPM handle"),
    ],
)
def test_bad_key_reference(keyfile, expected, files, cli):
    assert expected in cli.fails("csr", "--key", keyfile, "--subject", "CN=x", "--out", "out.csr")
    assert not (files / "out.csr").exists()
    if not keyfile.startswith("handle:"):
        assert expected in cli.fails("key", "show", keyfile)


def test_unknown_algorithm(cli, tmp_path: Path):
    line = cli.fails("key", "create", "--alg", "dsa1024", "--out", "k.key")
    assert "invalid choice: 'dsa1024'" in line
    assert not (tmp_path / "k.key").exists()


@pytest.mark.parametrize("tcti", ["swtpm:host=127.0.0.1,port={port}", "nosuchtcti:foo"])
def test_unreachable_tcti(tcti, cli, tmp_path: Path):
    tcti = tcti.format(port=free_port(2))
    line = cli.fails("--tcti", tcti, "key", "create", "--out", "k.key")
    assert f"cannot reach the TPM at TCTI '{tcti}'" in line
    assert not (tmp_path / "k.key").exists()
    line = cli.fails("key", "create", "--out", "k.key", env={"TPMTLS_TCTI": tcti})
    assert tcti in line


def test_existing_output_is_not_replaced(cli, tmp_path: Path):
    (tmp_path / "k.key").write_text("precious")
    assert "k.key: already exists" in cli.fails("key", "create", "--out", "k.key")
    assert (tmp_path / "k.key").read_text() == "precious"
    cli("key", "create", "--out", "k.key", "--force")
    assert (tmp_path / "k.key").read_text().startswith("-----BEGIN TSS2 PRIVATE KEY-----")
    assert list(tmp_path.glob(".k.key*")) == []  # no temp file left behind
    assert (tmp_path / "k.key.bak").read_text() == "precious"  # the key it replaced is kept
    assert (tmp_path / "k.key.bak").stat().st_mode & 0o777 == 0o600


def test_output_directory_missing(cli):
    assert "does not exist" in cli.fails("key", "create", "--out", "nodir/k.key")


def test_bad_persist_handles(cli, files):
    assert "not a persistent handle" in cli.fails("key", "persist", "good.key", "0x81800000")
    assert "not a TPM handle" in cli.fails("key", "persist", "good.key", "pineapple")


def test_import_of_garbage(cli, files):
    line = cli.fails("key", "import", "cert.pem", "--out", "x.key")
    assert "cert.pem" in line
    assert "missing.pem" in cli.fails("key", "import", "missing.pem", "--out", "x.key")
    assert not (files / "x.key").exists()
