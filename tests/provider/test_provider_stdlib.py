"""requests, urllib3 and plain ssl use TPM key files with no adapter once tpmtls is set up."""

from __future__ import annotations

import ssl

import pytest

import tpmtls
from support.peers import PythonTlsServer, verifying_server_context
from tpmtls import provider


@pytest.fixture
def server(pki):
    with PythonTlsServer(verifying_server_context(pki)) as s:
        yield s


@pytest.fixture
def injected(test_tpm, monkeypatch):
    monkeypatch.setenv("TPMTLS_TCTI", test_tpm.tcti)
    tpmtls.inject_into_ssl()
    yield
    tpmtls.extract_from_ssl()


def test_plain_ssl_load_cert_chain(injected, tpm_client, pki, server):
    import socket

    cert, key = tpm_client["ecc-p256"]
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    ctx.load_cert_chain(str(cert), str(key))  # the TPM key file, as-is
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert tls.recv(1024).endswith(b"hello tpm-client-ecc-p256\n")


def test_requests_with_tpm_key_file(injected, tpm_client, pki, server):
    import requests

    cert, key = tpm_client["rsa2048"]
    r = requests.get(f"https://localhost:{server.port}/", cert=(str(cert), str(key)), verify=str(pki.ca_file),
                     timeout=20)
    assert r.status_code == 200 and r.text == "hello tpm-client-rsa2048\n"


def test_urllib3_with_tpm_key_file(injected, tpm_client, pki, server):
    import urllib3

    cert, key = tpm_client["ecc-p384"]
    with urllib3.PoolManager(cert_file=str(cert), key_file=str(key), ca_certs=str(pki.ca_file),
                             timeout=20) as http:
        r = http.request("GET", f"https://localhost:{server.port}/")
    assert r.status == 200 and r.data == b"hello tpm-client-ecc-p384\n"


def test_requests_session_helper(tpm_client, pki, server, test_tpm):
    cert, key = tpm_client["ecc-p256"]
    with tpmtls.requests_session(cert, key, pki.ca_file, tcti=test_tpm.tcti) as session:
        for _ in range(3):  # one connection, reused
            assert session.get(f"https://localhost:{server.port}/", timeout=20).text == "hello tpm-client-ecc-p256\n"


def test_extract_undoes_inject(test_tpm, tpm_client, monkeypatch):
    monkeypatch.setenv("TPMTLS_TCTI", test_tpm.tcti)
    cert, key = tpm_client["ecc-p256"]
    tpmtls.inject_into_ssl()
    ssl.create_default_context().load_cert_chain(str(cert), str(key))
    tpmtls.extract_from_ssl()
    assert not provider.state.system_decoding
    with pytest.raises(ssl.SSLError):
        ssl.create_default_context().load_cert_chain(str(cert), str(key))
