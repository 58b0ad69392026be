"""Revocation at the NGINX front: `tpmtls certs nginx-front --crl` with a real dockerd behind it. After
`ca revoke`, `ca crl` and a reload, the revoked TPM client is refused (a session from before does not let it
back in) while another client of the same CA keeps working."""

from __future__ import annotations

import os
import signal
import socket
import ssl

import pytest

import tpmtls
from support.commands import require
from support.daemon import DaemonPki, start_daemon, tls_refused_by, tpmtls_cli
from support.nginx import Nginx
from support.peers import read_to_close
from support.wait import wait_until
from tpmtls.testing import free_port


def _second_tpm_client(dpki: DaemonPki) -> tuple:
    """Another machine's worth of TPM client: its own key, certificate and DOCKER_CERT_PATH."""
    root = dpki.root
    key, csr, cert = root / "tpm2.key", root / "tpm2.csr", root / "tpm2.crt"
    tpmtls_cli("key", "create", "--alg", "ecc-p256", "--out", str(key), env=dpki.env)
    tpmtls_cli("csr", "--key", str(key), "--subject", "CN=tpm-client-2", "--out", str(csr), env=dpki.env)
    tpmtls_cli("ca", "issue", str(dpki.ca_dir), "--csr", str(csr), "--client", "--out", str(cert), env=dpki.env)
    cert_path = root / "tpm2-certs"
    tpmtls_cli("certs", "env", "127.0.0.1:2376", "--cert-path", str(cert_path), "--cert", str(cert), "--key", str(key),
               "--ca", str(dpki.ca), env=dpki.env)
    return cert, key, cert_path


def _get(ctx: ssl.SSLContext, port: int, session: ssl.SSLSession | None = None) -> tuple[bytes, ssl.SSLSession, bool]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1", session=session) as tls:
            tls.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return read_to_close(tls), tls.session, tls.session_reused


def _reload(nginx: Nginx) -> None:
    """SIGHUP, then wait (bounded) until the new worker runs and the old one stopped taking connections."""
    log = nginx.workdir / "error.log"
    started = log.read_text().count("start worker process")
    assert nginx.pid is not None
    os.kill(nginx.pid, signal.SIGHUP)

    def reloaded() -> bool:
        text = log.read_text()
        return text.count("start worker process") > started and "gracefully shutting down" in text.split("reconfiguring")[-1]

    wait_until(reloaded, 20, "nginx reloading its configuration (SIGHUP)")


def test_a_revoked_client_is_refused_while_another_passes(test_tpm, tmp_path):
    require("dockerd", "docker", "nginx", "openssl")
    dpki = DaemonPki(tmp_path / "pki", test_tpm.env)  # its own: the test revokes its TPM client
    _, _, other_path = _second_tpm_client(dpki)
    crl = tmp_path / "ca.crl"
    tpmtls_cli("ca", "crl", str(dpki.ca_dir), "--out", str(crl), env=dpki.env)
    (tmp_path / "d").mkdir()
    with start_daemon(tmp_path / "d", dpki).dockerd as daemon:
        port = free_port()
        conf = tmp_path / "nginx.conf"
        tpmtls_cli("certs", "nginx-front", "--cert", str(dpki.server_cert), "--key", str(dpki.server_key),
                   "--ca", str(dpki.ca), "--crl", str(crl), "--listen", f"127.0.0.1:{port}",
                   "--socket", str(daemon.socket), "--user", "root", "--out", str(conf), env=dpki.env)
        assert f"ssl_crl                {crl};" in conf.read_text() and "ssl_session_cache      off;" in conf.read_text()
        url = f"tcp://127.0.0.1:{port}"
        with Nginx(tmp_path / "nginx", conf, port) as nginx:
            for cert_path in (dpki.tpm_dir, other_path):  # both pass before
                client = tpmtls.docker_client(url, cert_path=cert_path, tcti=test_tpm.tcti)
                try:
                    assert client.ping() is True
                finally:
                    client.close()
            ctx = tpmtls.ssl_context(dpki.tpm_cert, dpki.tpm_key, dpki.ca, tcti=test_tpm.tcti)
            reply, session, _ = _get(ctx, port)
            assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
            assert _get(ctx, port, session)[2], "nginx resumes sessions (the TPM signs once)"

            out = tpmtls_cli("ca", "revoke", str(dpki.ca_dir), "--cert", str(dpki.tpm_cert), "--reason",
                             "keyCompromise", env=dpki.env).stdout
            assert out.startswith("revoked ")
            tpmtls_cli("ca", "crl", str(dpki.ca_dir), "--out", str(crl), "--force", env=dpki.env)
            _reload(nginx)

            with pytest.raises(tpmtls.TpmtlsError) as refused:
                tpmtls.docker_client(url, cert_path=dpki.tpm_dir, tcti=test_tpm.tcti)
            assert "refused our client certificate" in str(refused.value), str(refused.value)
            reply, _, resumed = _get(ctx, port, session)  # a session from before the revocation
            assert not resumed and reply.startswith(b"HTTP/1.1 400") and b"The SSL certificate error" in reply
            assert "certificate revoked" in (nginx.workdir / "error.log").read_text()

            client = tpmtls.docker_client(url, cert_path=other_path, tcti=test_tpm.tcti)  # the other one still passes
            try:
                assert client.ping() is True
            finally:
                client.close()
            assert tls_refused_by(port, dpki.soft_dir / "cert.pem", dpki.soft_dir / "key.pem", dpki.ca) == ""
