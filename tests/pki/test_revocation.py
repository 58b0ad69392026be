"""`tpmtls ca revoke` and `tpmtls ca crl`: revocations recorded by the file CA, CRLs OpenSSL checks clients against."""

from __future__ import annotations

import json
import subprocess
import sys

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from support.commands import openssl
from support.wait import wait_until

PEM = serialization.Encoding.PEM


def _client(cli, tmp_path, name: str, ca: str = "ca") -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / f"{name}.key").write_bytes(key.private_bytes(PEM, serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()))
    openssl("req", "-new", "-key", str(tmp_path / f"{name}.key"), "-subj", f"/CN={name}", "-out",
            str(tmp_path / f"{name}.csr"))
    cli("ca", "issue", ca, "--csr", f"{name}.csr", "--client", "--out", f"{name}.crt")
    return x509.load_pem_x509_certificate((tmp_path / f"{name}.crt").read_bytes())


def _verify(tmp_path, name: str, crl: str = "ca.crl") -> str:
    proc = subprocess.run(["openssl", "verify", "-crl_check", "-CAfile", str(tmp_path / "ca" / "ca.crt"), "-CRLfile",
                           str(tmp_path / crl), str(tmp_path / f"{name}.crt")], capture_output=True, text=True,
                          timeout=60)
    return proc.stdout + proc.stderr


def test_revoke_then_crl_then_openssl_refuses_only_the_revoked(cli, tmp_path):
    cli("ca", "init", "ca", "--name", "revocation test CA")
    bad, good = _client(cli, tmp_path, "bad"), _client(cli, tmp_path, "good")
    out = cli("ca", "revoke", "ca", "--cert", "bad.crt", "--reason", "key-compromise").stdout
    assert out.startswith(f"revoked {bad.serial_number:x} (CN=bad): keyCompromise;"), out
    out = cli("ca", "crl", "ca", "--out", "ca.crl", "--hours", "2").stdout
    assert out.startswith("wrote ca.crl: 1 revoked, next update ")

    crl = x509.load_pem_x509_crl((tmp_path / "ca.crl").read_bytes())
    ca_cert = x509.load_pem_x509_certificate((tmp_path / "ca" / "ca.crt").read_bytes())
    assert crl.is_signature_valid(ca_cert.public_key()) and crl.issuer == ca_cert.subject
    entry = crl.get_revoked_certificate_by_serial_number(bad.serial_number)
    assert entry is not None and entry.extensions.get_extension_for_class(x509.CRLReason).value.reason \
        == x509.ReasonFlags.key_compromise
    assert crl.get_revoked_certificate_by_serial_number(good.serial_number) is None
    assert 7000 < (crl.next_update_utc - crl.last_update_utc).total_seconds() < 7300
    assert "certificate revoked" in _verify(tmp_path, "bad")
    assert _verify(tmp_path, "good").strip().endswith("good.crt: OK")
    assert b"verify OK" in openssl("crl", "-in", str(tmp_path / "ca.crl"), "-noout", "-CAfile",
                                         str(tmp_path / "ca" / "ca.crt")).stderr

    # by serial as openssl prints it, once more: already revoked, nothing changes; the CRL number grows
    serial = openssl("x509", "-in", str(tmp_path / "good.crt"), "-noout", "-serial").stdout.decode().strip()
    assert serial.startswith("serial=")
    cli("ca", "revoke", "ca", "--serial", serial.split("=", 1)[1])
    again = cli("ca", "revoke", "ca", "--serial", f"0x{good.serial_number:X}").stdout
    assert again.startswith(f"{good.serial_number:x} (CN=good) was already revoked on ")
    line = cli.fails("ca", "crl", "ca", "--out", "ca.crl")
    assert "ca.crl: already exists" in line and "--force" in line
    cli("ca", "crl", "ca", "--out", "ca.crl", "--force")
    number = x509.load_pem_x509_crl((tmp_path / "ca.crl").read_bytes()).extensions.get_extension_for_class(
        x509.CRLNumber).value.crl_number
    assert number == 2 and "certificate revoked" in _verify(tmp_path, "good")
    record = json.loads((tmp_path / "ca" / "revoked.json").read_text())
    assert [e["serial"] for e in record["revoked"]] == [f"{bad.serial_number:x}", f"{good.serial_number:x}"]


def test_bad_revocations_are_one_line(cli, tmp_path):
    cli("ca", "init", "ca", "--name", "revocation test CA")
    cli("ca", "init", "other", "--name", "another CA")
    _client(cli, tmp_path, "stranger", ca="other")
    line = cli.fails("ca", "revoke", "ca", "--cert", "stranger.crt")
    assert line == ("tpmtls: stranger.crt: that certificate (CN=stranger) was not issued by this CA "
                    "(CN=revocation test CA)"), line
    assert "not a hexadecimal serial" in cli.fails("ca", "revoke", "ca", "--serial", "xyz")
    assert "not a revocation reason; one of unspecified, keyCompromise" in cli.fails(
        "ca", "revoke", "ca", "--serial", "1f", "--reason", "tired")
    assert cli.fails("ca", "revoke", "ca", "--cert", "missing.crt").startswith("tpmtls: missing.crt: ")
    assert "give a lifetime" in cli.fails("ca", "crl", "ca", "--out", "x.crl", "--hours", "0")
    assert not (tmp_path / "ca" / "revoked.json").exists() and not (tmp_path / "x.crl").exists()
    # a serial this CA did not keep is recorded, and said so
    out = cli("ca", "revoke", "ca", "--serial", "1f").stdout
    assert "no DIR/issued/1f.pem: not a certificate this CA kept" in out


def test_crl_daemon_resigns_after_a_revocation(cli, tmp_path):
    cli("ca", "init", "ca", "--name", "revocation test CA")
    bad = _client(cli, tmp_path, "bad")
    proc = subprocess.Popen([sys.executable, "-m", "tpmtls", "ca", "crl", "ca", "--out", "ca.crl", "--daemon"],
                            cwd=tmp_path, env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def crl_number() -> int:
            try:
                crl = x509.load_pem_x509_crl((tmp_path / "ca.crl").read_bytes())
            except (OSError, ValueError):
                return 0
            return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number

        wait_until(lambda: crl_number() == 1, 60, "the CRL daemon's first CRL")
        cli("ca", "revoke", "ca", "--cert", "bad.crt")
        wait_until(lambda: crl_number() == 2, 60, "the CRL daemon re-signing after the revocation")
        crl = x509.load_pem_x509_crl((tmp_path / "ca.crl").read_bytes())
        assert crl.get_revoked_certificate_by_serial_number(bad.serial_number) is not None
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert err.count("wrote CRL") == 2 and "(1 revoked)" in err
