"""A client context without a CA file trusts the system's CAs: from the hashed directory,
looked up at handshake time, when the default bundle lives in it; else from the bundle.

The "system" here is ours: $SSL_CERT_DIR / $SSL_CERT_FILE name a hashed directory made
with `openssl rehash` (what update-ca-certificates keeps) and bundles, against a real
`openssl s_server` whose certificate comes from the test CA.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
import urllib.request

import pytest

import tpmtls
from support.peers import OpenSSLServer, Pki


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pki = Pki(tmp_path_factory.mktemp("roots"), cn="system roots test CA")
    with OpenSSLServer(pki, verify_client=False) as s:
        yield pki, s


def _system(tmp_path, monkeypatch, cas, bundle_inside: bool, bundle: list | None = None):
    """A hashed CA directory holding `cas` and a default bundle (inside it, or elsewhere holding `bundle`)."""
    certs = tmp_path / "certs"
    certs.mkdir()
    for i, ca in enumerate(cas):
        shutil.copy(ca, certs / f"ca{i}.pem")
    subprocess.run(["openssl", "rehash", str(certs)], check=True, capture_output=True, timeout=30)
    target = certs / "ca-certificates.crt" if bundle_inside else tmp_path / "bundle.crt"
    target.write_bytes(b"".join(p.read_bytes() for p in (cas if bundle is None else bundle)))
    monkeypatch.setenv("SSL_CERT_DIR", str(certs))
    monkeypatch.setenv("SSL_CERT_FILE", str(target))
    return certs


def _get(port: int) -> int:
    ctx = tpmtls.ssl_context()
    with urllib.request.urlopen(f"https://localhost:{port}/", context=ctx, timeout=20) as r:  # noqa: S310
        return r.status


def test_hashed_directory_is_read_lazily_and_trusted(server, tmp_path, monkeypatch):
    pki, s = server
    _system(tmp_path, monkeypatch, [pki.ca_file], bundle_inside=True)
    ctx = tpmtls.ssl_context()
    assert ctx.cert_store_stats()["x509_ca"] == 0  # nothing parsed up front
    assert _get(s.port) == 200


def test_a_ca_missing_from_the_directory_is_not_trusted(server, tmp_path, monkeypatch):
    pki, s = server
    other = Pki(tmp_path / "other", cn="another CA")
    _system(tmp_path, monkeypatch, [other.ca_file], bundle_inside=True)
    with pytest.raises(urllib.error.URLError, match="certificate verify failed"):
        _get(s.port)


def test_a_bundle_outside_the_directory_is_loaded_as_before(server, tmp_path, monkeypatch):
    """$SSL_CERT_FILE naming another bundle (a site's own CAs): its CAs count, read whole."""
    pki, s = server
    other = Pki(tmp_path / "other", cn="another CA")
    _system(tmp_path, monkeypatch, [other.ca_file], bundle_inside=False, bundle=[pki.ca_file])
    ctx = tpmtls.ssl_context()
    assert ctx.cert_store_stats()["x509_ca"] == 1
    assert _get(s.port) == 200
    assert isinstance(ctx, ssl.SSLContext)
