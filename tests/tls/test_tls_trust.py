"""`requests_session` trusts exactly the CAs it was given, whatever the environment says,
and leaves no reference cycle behind (so the context is freed as soon as the session is).

The peer of an unrelated CA is a real `openssl s_server`; $REQUESTS_CA_BUNDLE and
$CURL_CA_BUNDLE point at that CA. Checked in-process and as a user's own process.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import weakref

import pytest
import requests

import tpmtls
from support.peers import OpenSSLServer, Pki
from tpmtls.lab.process import child_env

ENV_BUNDLES = ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"]


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    """A server whose certificate (localhost, 127.0.0.1) comes from a CA we do not trust."""
    pki = Pki(tmp_path_factory.mktemp("foreign"), cn="unrelated CA")
    with OpenSSLServer(pki, verify_client=False) as server:
        yield pki, server


@pytest.mark.parametrize("variable", ENV_BUNDLES)
def test_env_bundle_does_not_make_a_foreign_server_trusted(variable, foreign, tpm_client, pki, s_server, test_tpm,
                                                           monkeypatch):
    other, server = foreign
    for name in ENV_BUNDLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, str(other.ca_file))
    cert, key = tpm_client["ecc-p256"]
    with tpmtls.requests_session(cert, key, pki.ca_file, tcti=test_tpm.tcti) as session:
        with pytest.raises(requests.exceptions.SSLError, match="certificate verify failed"):
            session.get(f"https://localhost:{server.port}/", timeout=20)
        # our CA's server still works, with our client certificate
        page = session.get(f"https://localhost:{s_server.port}/", timeout=20).text
        assert "Subject: CN=tpm-client-ecc-p256" in page


def test_no_ca_file_is_loaded_into_the_context_per_connection(tpm_client, pki, s_server, test_tpm, monkeypatch):
    """requests/urllib3 would load the env bundle (or certifi) into our context on every connection."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    cert, key = tpm_client["ecc-p256"]
    with tpmtls.requests_session(cert, key, pki.ca_file, tcti=test_tpm.tcti) as session:
        context = session.get_adapter("https://").context
        before = context.cert_store_stats()
        for _ in range(3):
            session.get(f"https://localhost:{s_server.port}/", timeout=20)
            session.close()  # new connections each time
        assert context.cert_store_stats() == before == {"crl": 0, "x509": 1, "x509_ca": 1}


def test_per_request_verify_false_and_cert_are_refused(tpm_client, pki, s_server, test_tpm):
    cert, key = tpm_client["ecc-p256"]
    with tpmtls.requests_session(cert, key, pki.ca_file, tcti=test_tpm.tcti) as session:
        with pytest.raises(tpmtls.TpmtlsError, match="verify=False is not supported"):
            session.get(f"https://localhost:{s_server.port}/", verify=False, timeout=20)
        with pytest.raises(tpmtls.TpmtlsError, match="cert= is not supported"):
            session.get(f"https://localhost:{s_server.port}/", cert=(str(cert), str(key)), timeout=20)


def test_session_and_context_are_freed_without_the_garbage_collector(tpm_client, pki, test_tpm):
    """No reference cycle: dropping the session frees its adapter and context at once."""
    cert, key = tpm_client["ecc-p256"]
    gc.collect()
    gc.disable()
    try:
        session = tpmtls.requests_session(cert, key, pki.ca_file, tcti=test_tpm.tcti)
        adapter = weakref.ref(session.get_adapter("https://"))
        context = weakref.ref(session.get_adapter("https://").context)
        session.close()
        del session
        assert adapter() is None and context() is None
    finally:
        gc.enable()


SCRIPT = """
    import sys, requests, tpmtls
    session = tpmtls.requests_session({cert!r}, {key!r}, {ca!r})   # held in a module global at exit
    try:
        session.get("https://localhost:{foreign}/", timeout=20)
        print("foreign server ACCEPTED")
    except requests.exceptions.SSLError:
        print("foreign server refused")
    page = session.get("https://localhost:{ours}/", timeout=20).text
    print("ours:", "Subject: CN=tpm-client-ecc-p256" in page)
"""


@pytest.mark.parametrize("variable", ENV_BUNDLES)
def test_as_its_own_process(variable, foreign, tpm_client, pki, s_server, test_tpm, tmp_path):
    other, server = foreign
    cert, key = tpm_client["ecc-p256"]
    env = child_env({**test_tpm.env, variable: str(other.ca_file)})
    for name in ENV_BUNDLES:
        if name != variable:
            env.pop(name, None)
    code = textwrap.dedent(SCRIPT).format(cert=str(cert), key=str(key), ca=str(pki.ca_file),
                                          foreign=server.port, ours=s_server.port)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.stdout.splitlines() == ["foreign server refused", "ours: True"], proc.stdout + proc.stderr
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
