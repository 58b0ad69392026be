"""TPM keys authenticate TLS clients through both OpenSSLs, against `openssl s_server -Verify 1`."""

from __future__ import annotations

import subprocess

import pytest
from cryptography.hazmat.primitives import serialization

import tpmtls
from support.commands import openssl, require
from support.peers import (
    OpenSSLServer,
    PythonTlsServer,
    verifying_server_context,
)
from support.tls_clients import client_subject, pyopenssl_get, stdlib_get
from tpmtls import provider
from tpmtls.lab.process import child_env
from tpmtls.tpm import default_pool

ALGS = ["ecc-p256", "ecc-p384", "rsa2048", "rsa3072"]


def make_context(path: str, cert, key, ca, tcti: str, version: str):
    if path == "stdlib":
        return tpmtls.ssl_context(cert, key, ca, tcti=tcti, tls_version=version)
    return tpmtls.pyopenssl_context(cert, key, ca, hostname="localhost", tcti=tcti, tls_version=version)


@pytest.mark.parametrize("path", ["stdlib", "pyopenssl"])
@pytest.mark.parametrize("version", ["1.3", "1.2"])
@pytest.mark.parametrize("alg", ALGS)
def test_client_auth(alg, version, path, tpm_client, pki, s_server, test_tpm):
    cert, key = tpm_client[alg]
    pool = default_pool(test_tpm.tcti)
    before = pool.stats().signatures
    ctx = make_context(path, cert, key, pki.ca_file, test_tpm.tcti, version)
    page = (stdlib_get if path == "stdlib" else pyopenssl_get)(ctx, s_server.port)
    # s_server -www reports the session, including the client certificate it verified
    assert client_subject(page) == f"CN=tpm-client-{alg}"
    assert f"Protocol  : TLSv{version}".encode() in page
    assert pool.stats().signatures == before + 1  # exactly one TPM signature for the handshake
    scheme = provider.last_signature_scheme()
    if alg.startswith("rsa") and version == "1.3":
        assert scheme.startswith("rsa_pss_rsae_")  # TLS 1.3 forbids PKCS#1 v1.5 here
    if alg.startswith("ecc"):
        assert scheme.startswith("ecdsa_")


@pytest.mark.parametrize("path", ["stdlib", "pyopenssl"])
@pytest.mark.parametrize("alg", ["ecc-p256", "rsa2048"])
def test_client_auth_on_each_tpm_path(alg, path, path_client, any_tpm, pki, s_server):
    """Both OpenSSLs' handshakes through tpm2-abrmd and through /dev/tpmrm0, one TPM signature each."""
    cert, key = path_client[alg]
    pool = default_pool(any_tpm.tcti)
    before = pool.stats()
    ctx = make_context(path, cert, key, pki.ca_file, any_tpm.tcti, "1.3")
    page = (stdlib_get if path == "stdlib" else pyopenssl_get)(ctx, s_server.port)
    assert client_subject(page) == f"CN=tpm-client-{alg}"
    after = pool.stats()
    assert after.signatures == before.signatures + 1 and after.errors == before.errors


def test_software_keys_unaffected(pki, s_server):
    """The shim never takes over software keys, digests or ECDHE groups in either OpenSSL."""
    cert, key = pki.software_client()
    for version in ("1.3", "1.2"):
        ctx = tpmtls.ssl_context(cert, key, pki.ca_file, tls_version=version)
        assert client_subject(stdlib_get(ctx, s_server.port)) == "CN=software-client"
        pctx = tpmtls.pyopenssl_context(cert, key, pki.ca_file, hostname="localhost", tls_version=version)
        assert client_subject(pyopenssl_get(pctx, s_server.port)) == "CN=software-client"
    import ssl

    plain = ssl.create_default_context(cafile=str(pki.ca_file))
    plain.load_cert_chain(str(cert), str(key))
    plain.set_ecdh_curve("prime256v1")
    assert client_subject(stdlib_get(plain, s_server.port)) == "CN=software-client"


def test_tpm2_openssl_key_authenticates_through_tpmtls(test_tpm, pki, s_server, tmp_path):
    require("openssl")
    key_file = tmp_path / "theirs.key"
    env = {**test_tpm.env, "TPM2OPENSSL_TCTI": test_tpm.tcti}
    openssl("genpkey", "-provider", "tpm2", "-provider", "default", "-algorithm", "EC",
            "-pkeyopt", "group:P-256", "-out", str(key_file), env=env)
    pub = openssl("pkey", "-provider", "tpm2", "-provider", "default", "-in", str(key_file), "-pubout", env=env).stdout
    cert = pki.issue(serialization.load_pem_public_key(pub), "made-by-tpm2-openssl", "theirs.crt")
    for path in ("stdlib", "pyopenssl"):
        ctx = make_context(path, cert, key_file, pki.ca_file, test_tpm.tcti, "1.3")
        page = (stdlib_get if path == "stdlib" else pyopenssl_get)(ctx, s_server.port)
        assert client_subject(page) == "CN=made-by-tpm2-openssl"


def test_tpmtls_key_works_in_tpm2_openssl_client(test_tpm, tpm_client, pki):
    """`openssl s_client -provider tpm2` authenticates with a key tpmtls created."""
    require("openssl")
    cert, key = tpm_client["ecc-p256"]
    env = child_env({**test_tpm.env, "TPM2OPENSSL_TCTI": test_tpm.tcti})
    with PythonTlsServer(verifying_server_context(pki)) as server:
        proc = subprocess.run(
            ["openssl", "s_client", "-provider", "tpm2", "-provider", "default",
             "-propquery", "?provider=tpm2,tpm2.digest!=yes",
             "-connect", f"127.0.0.1:{server.port}", "-servername", "localhost", "-tls1_3",
             "-cert", str(cert), "-key", str(key), "-CAfile", str(pki.ca_file), "-verify_return_error",
             "-ign_eof"],
            input=b"GET / HTTP/1.0\r\n\r\n", capture_output=True, env=env, timeout=60,
        )
    assert proc.returncode == 0, (server.errors, proc.stderr[-500:])
    assert b"hello tpm-client-ecc-p256" in proc.stdout, (server.errors, proc.stderr[-500:])
    assert server.subjects == ["tpm-client-ecc-p256"]


def test_no_digest_from_the_shim():
    """The shim offers no digests, so OpenSSL can never hash a transcript in the TPM."""
    import ctypes

    provider.load_into_system_ssl()
    libcrypto = provider.state.libcrypto
    libcrypto.EVP_MD_fetch.restype = ctypes.c_void_p
    libcrypto.EVP_MD_fetch.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
    assert not libcrypto.EVP_MD_fetch(None, b"SHA256", b"provider=tpmtls")
    assert libcrypto.EVP_MD_fetch(None, b"SHA256", None)  # the default provider's


def test_server_not_trusting_our_ca(tpm_client, tmp_path, test_tpm, cli):
    """A server that does not trust the client's CA: the handshake fails with one clear line."""
    from support.peers import Pki

    other = Pki(tmp_path / "other", cn="another CA")
    cert, key = tpm_client["ecc-p256"]
    our_ca = tpm_client["ecc-p256"][0].parent / "ca.crt"
    # a server whose certificate and client-CA list come from another CA, trusted by us for its cert
    both = tmp_path / "both.crt"
    both.write_bytes(our_ca.read_bytes() + other.ca_file.read_bytes())
    with OpenSSLServer(other) as server:
        line = cli.fails("connect", f"127.0.0.1:{server.port}", "--cert", str(cert), "--key", str(key),
                         "--cafile", str(both), "--servername", "localhost")
    assert f"127.0.0.1:{server.port}" in line and "refused our client certificate" in line


def test_connect_cli(cli, tpm_client, pki, s_server):
    cert, key = tpm_client["rsa2048"]
    out = cli("connect", f"127.0.0.1:{s_server.port}", "--cert", str(cert), "--key", str(key),
              "--cafile", str(pki.ca_file), "--servername", "localhost", "--tls1.3").stdout
    assert "protocol: TLSv1.3" in out and "client signature: rsa_pss_rsae_sha256" in out
    assert "peer: commonName=localhost" in out
    line = cli.fails("connect", f"127.0.0.1:{s_server.port}", "--cert", str(cert), "--key", str(key),
                     "--cafile", str(pki.ca_file), "--servername", "wrong.example")
    assert "not trusted for 'wrong.example'" in line


@pytest.mark.parametrize("path", ["stdlib", "pyopenssl"])
def test_tls13_rsa_with_raw_pss_fallback(path, tpm_client, pki, s_server, test_tpm):
    """The fallback for TPMs whose PSS salt TLS 1.3 rejects: software PSS + raw RSA in the TPM."""
    cert, key = tpm_client["rsa2048"]
    pool = default_pool(test_tpm.tcti)
    with pool.pss.forcing_raw():
        before = pool.stats()
        ctx = make_context(path, cert, key, pki.ca_file, test_tpm.tcti, "1.3")
        page = (stdlib_get if path == "stdlib" else pyopenssl_get)(ctx, s_server.port)
        assert client_subject(page) == "CN=tpm-client-rsa2048"
        after = pool.stats()
        assert (after.decryptions - before.decryptions, after.signatures - before.signatures) == (1, 0)
