"""`--format json` of key show, key ek, connect and ca issue: one JSON object on stdout, valid against
its schema in docs/schemas/ (docs/scripting.md), saying what the text says."""

from __future__ import annotations

import re

from cryptography import x509

from support.schemas import validated


def test_key_show(cli, tmp_path):
    cli("key", "create", "--alg", "ecc-p256", "--out", str(tmp_path / "k.key"))
    shown = validated(cli("key", "show", str(tmp_path / "k.key"), "--format", "json").stdout, "key-show")
    assert (shown["form"], shown["algorithm"], shown["origin"], shown["fixed_tpm"], shown["password"]) == (
        "tss2-private-key", "ecc-p256", "tpm", True, False)
    assert shown["parent"] == 0x40000001 and shown["handle"] is None
    assert {"fixedtpm", "fixedparent", "sensitivedataorigin"} <= {a.lower() for a in shown["attributes"]}
    assert shown["public_key"] == cli("key", "show", str(tmp_path / "k.key"), "--pubout").stdout
    text = cli("key", "show", str(tmp_path / "k.key")).stdout
    assert f"name: {shown['name']}" in text


def test_key_ek(cli, tmp_path):
    ek = validated(cli("key", "ek", "--out", str(tmp_path / "ek.pem"), "--format", "json").stdout, "key-ek")
    assert (ek["ek_type"], ek["out"], ek["certificate"]) == ("EK-RSA2048", str(tmp_path / "ek.pem"), False)
    assert (tmp_path / "ek.pem").read_text().startswith(ek["public_key"])


def test_connect(cli, s_server, tpm_client, pki):
    cert, key = tpm_client["ecc-p256"]
    out = cli("connect", f"127.0.0.1:{s_server.port}", "--servername", "localhost", "--cert", str(cert),
              "--key", str(key), "--cafile", str(pki.ca_file), "--tls1.3", "--format", "json").stdout
    result = validated(out, "connect")
    assert (result["port"], result["server_name"], result["protocol"], result["resumed"]) == (
        s_server.port, "localhost", "TLSv1.3", False)
    assert result["client_signature"] == {"by": "tpm", "scheme": "ecdsa_secp256r1_sha256"}
    assert result["peer"] == "commonName=localhost"


def test_ca_issue(cli, tmp_path):
    cli("ca", "init", str(tmp_path / "ca"), "--name", "json CA")
    cli("key", "create", "--out", str(tmp_path / "k.key"))
    cli("csr", "--key", str(tmp_path / "k.key"), "--subject", "CN=json-client", "--out", str(tmp_path / "k.csr"))
    out = cli("ca", "issue", str(tmp_path / "ca"), "--csr", str(tmp_path / "k.csr"), "--client",
              "--out", str(tmp_path / "k.crt"), "--format", "json").stdout
    issued = validated(out, "ca-issue")
    assert (issued["role"], issued["subject"], issued["issuer"], issued["san"]) == (
        "client", "CN=json-client", "CN=json CA", [])
    assert int(issued["serial"], 16) == x509.load_pem_x509_certificate((tmp_path / "k.crt").read_bytes()).serial_number
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", issued["not_after"])
