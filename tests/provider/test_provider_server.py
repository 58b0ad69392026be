"""Server role: a Python TLS server whose key is in the TPM, checked by openssl s_client and curl."""

from __future__ import annotations

import subprocess

import pytest

import tpmtls
from support.commands import require
from support.peers import PythonTlsServer
from tpmtls.lab.process import child_env


@pytest.fixture(scope="module")
def tpm_server_cert(tpm, pki):
    """A TPM key with a server certificate for localhost / 127.0.0.1."""
    key_path = pki.dir / "tpm-server.key"
    key = tpm.create_key("ecc-p256", key_path)
    return pki.issue(key.public_key(), "localhost", "tpm-server.crt", server=True), key_path


@pytest.mark.parametrize("version", ["1.3", "1.2"])
def test_openssl_s_client_accepts_tpm_server(version, tpm_server_cert, pki, test_tpm):
    require("openssl")
    cert, key = tpm_server_cert
    ctx = tpmtls.ssl_context(cert, key, pki.ca_file, server=True, tcti=test_tpm.tcti, tls_version=version)
    client_cert, client_key = pki.software_client("s-client")
    with PythonTlsServer(ctx) as server:
        proc = subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{server.port}", "-servername", "localhost",
             "-CAfile", str(pki.ca_file), "-verify_return_error", "-verify_hostname", "localhost",
             f"-tls{version.replace('.', '_')}", "-cert", str(client_cert), "-key", str(client_key), "-ign_eof"],
            input=b"GET / HTTP/1.0\r\n\r\n", capture_output=True, env=child_env(), timeout=60,
        )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-500:]
    assert b"Verification: OK" in proc.stdout or b"Verify return code: 0 (ok)" in proc.stdout
    assert b"hello s-client" in proc.stdout
    assert server.errors == []


def test_curl_accepts_tpm_server(tpm_server_cert, pki, test_tpm):
    require("curl")
    cert, key = tpm_server_cert
    ctx = tpmtls.ssl_context(cert, key, pki.ca_file, server=True, tcti=test_tpm.tcti)
    client_cert, client_key = pki.software_client("curl-client")
    with PythonTlsServer(ctx) as server:
        proc = subprocess.run(
            ["curl", "-sS", "--max-time", "20", "--cacert", str(pki.ca_file), "--cert", str(client_cert),
             "--key", str(client_key), f"https://localhost:{server.port}/",
             "--resolve", f"localhost:{server.port}:127.0.0.1"],
            capture_output=True, env=child_env(), timeout=60,
        )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert proc.stdout == b"hello curl-client\n"


def test_tpm_server_refuses_client_without_certificate(tpm_server_cert, pki, test_tpm):
    require("curl")
    cert, key = tpm_server_cert
    ctx = tpmtls.ssl_context(cert, key, pki.ca_file, server=True, tcti=test_tpm.tcti)
    with PythonTlsServer(ctx) as server:
        proc = subprocess.run(
            ["curl", "-sS", "--max-time", "20", "--cacert", str(pki.ca_file), f"https://localhost:{server.port}/",
             "--resolve", f"localhost:{server.port}:127.0.0.1"],
            capture_output=True, env=child_env(), timeout=60,
        )
    assert proc.returncode != 0
    assert server.subjects == []


def test_pyopenssl_server_role(tpm_server_cert, pki, test_tpm):
    """The pyOpenSSL path serves too: a TPM-key server accepting a stdlib mTLS client."""
    import socket
    import ssl
    import threading

    from OpenSSL import SSL

    cert, key = tpm_server_cert
    sctx = tpmtls.pyopenssl_context(cert, key, pki.ca_file, server=True, tcti=test_tpm.tcti)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen: list[str] = []

    def serve() -> None:
        raw, _ = listener.accept()
        conn = SSL.Connection(sctx, raw)
        conn.set_accept_state()
        conn.do_handshake()
        seen.append(conn.get_peer_certificate().to_cryptography().subject.rfc4514_string())
        conn.sendall(b"ok")
        conn.shutdown()
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client_cert, client_key = pki.software_client("py-client")
    cctx = ssl.create_default_context(cafile=str(pki.ca_file))
    cctx.load_cert_chain(str(client_cert), str(client_key))
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        with cctx.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.recv(2) == b"ok"
    thread.join(10)
    listener.close()
    assert seen == ["CN=py-client"]
