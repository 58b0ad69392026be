"""An expired client certificate is named as such, with the command that renews it, before any peer is
blamed: push, pull, the proxy, daemon-proxy and docker_client. And a running proxy takes a renewed
certificate from disk without a restart.

Before, a push with an expired certs.d copy said the registry "refused our client certificate" (is it
issued by a CA the registry trusts?), after a round trip to it.
"""

from __future__ import annotations

import datetime
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from support.commands import one_line
from support.proxy import RegistryProxyProcess
from support.registry import env_for, run_cli
from tpmtls.enroll.renewal import RenewalRecord

PEM = serialization.Encoding.PEM
ACME = {"kind": "acme", "directory": "https://enroll.example:8443/acme/directory", "identifier": "ek", "ek": "rsa",
        "cafile": None, "attestation_ca": None}


def _client_cert(pki, public_key, path: Path, *, ends: datetime.datetime) -> Path:
    """A client certificate from the test CA that ends at `ends`."""
    begins = min(ends, datetime.datetime.now(datetime.timezone.utc)) - datetime.timedelta(hours=1)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "renew-me")]))
            .issuer_name(pki.cert.subject).public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(begins).not_valid_after(ends)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(pki.key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(PEM))
    return path


@pytest.fixture
def expired(pki, tpm, tmp_path):
    """An enrolled certificate (its renewal record says ACME) that ended an hour ago, installed in a certs.d
    directory and a DOCKER_CERT_PATH."""
    key = tpm.create_key("ecc-p256", tmp_path / "client.key")
    cert = _client_cert(pki, key.public_key(), tmp_path / "client.cert",
                        ends=datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1))
    record = RenewalRecord.for_files(cert, tmp_path / "client.key")
    record.source = dict(ACME)
    certs_d = tmp_path / "certs.d"
    certs_d.mkdir()
    ca = (pki.ca_file.read_bytes(), 0o644)
    return {"cert": cert, "certs_d": certs_d, "record": record,
            "install": lambda host: record.install("certs.d", certs_d / host, {"ca.crt": ca}),
            "cert_path": record.install("cert-path", tmp_path / "docker-certs", {"ca.pem": ca})}


def test_push_and_pull_say_expired_and_how_to_renew(registry, expired, small_image, test_tpm, tmp_path):
    host = f"localhost:{registry.port}"
    copy = expired["install"](host) / "client.cert"
    env = env_for(test_tpm, tmp_path, TPMTLS_CERTS_D=str(expired["certs_d"]))
    renew = f"renew it: tpmtls enroll --renew --cert-out {expired['cert']}"
    line = one_line(run_cli("push", f"docker-archive:{small_image}", f"{host}/late:1", env=env))
    assert line.startswith(f"tpmtls-push: {host}: our client certificate {copy} expired on "), line
    assert line.endswith(renew), line
    line = one_line(run_cli("pull", f"{host}/late:1", f"oci:{tmp_path / 'out'}", env=env))
    assert line.startswith(f"tpmtls-pull: {host}: our client certificate {copy} expired on ") and line.endswith(renew)


def test_proxy_and_daemon_proxy_refuse_to_start_with_it(registry, expired, test_tpm, tmp_path):
    host = f"localhost:{registry.port}"
    copy = expired["install"](host) / "client.cert"
    env = {**test_tpm.env}
    proc = subprocess.run([sys.executable, "-m", "tpmtls", "proxy", "--upstream", host, "--cert-dir",
                           str(copy.parent)], env=env, capture_output=True, text=True, timeout=60)
    line = proc.stderr.strip()
    assert proc.returncode != 0 and "\n" not in line, proc.stderr
    assert f"our client certificate {copy} expired on " in line and "renew it: tpmtls enroll --renew" in line
    cert_path = expired["cert_path"]
    proc = subprocess.run([sys.executable, "-m", "tpmtls", "daemon-proxy", "--upstream", "tcp://127.0.0.1:1",
                           "--listen", f"unix://{tmp_path / 'd.sock'}", "--cert-path", str(cert_path)], env=env,
                          capture_output=True, text=True, timeout=60)
    line = proc.stderr.strip()
    assert proc.returncode != 0 and "\n" not in line, proc.stderr
    assert f"our client certificate {cert_path / 'cert.pem'} expired on " in line, line
    assert line.endswith(f"renew it: tpmtls enroll --renew --cert-out {expired['cert']}"), line


def test_docker_client_says_expired_before_connecting(expired, test_tpm):
    import tpmtls

    cert_path = expired["cert_path"]
    with pytest.raises(tpmtls.TpmtlsError) as e:
        tpmtls.docker_client("tcp://127.0.0.1:1", cert_path=cert_path, tcti=test_tpm.tcti)
    text = str(e.value)
    assert text.startswith(f"tcp://127.0.0.1:1: our client certificate {cert_path / 'cert.pem'} expired on "), text
    assert text.endswith(f"renew it: tpmtls enroll --renew --cert-out {expired['cert']}")


def test_a_copy_without_a_record_still_says_expired(registry, pki, tpm, small_image, test_tpm, tmp_path):
    host = f"localhost:{registry.port}"
    d = tmp_path / "certs.d" / host
    d.mkdir(parents=True)
    key = tpm.create_key("ecc-p256", d / "client.key")
    _client_cert(pki, key.public_key(), d / "client.cert",
                 ends=datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=1))
    shutil.copy(pki.ca_file, d / "ca.crt")
    env = env_for(test_tpm, tmp_path, TPMTLS_CERTS_D=str(tmp_path / "certs.d"))
    line = one_line(run_cli("push", f"docker-archive:{small_image}", f"{host}/late:1", env=env))
    assert "expired on" in line and line.endswith("renew it: tpmtls enroll --renew (with the options it was enrolled "
                                                  "with)"), line


def test_a_running_proxy_takes_the_renewed_certificate(registry, pki, tpm, test_tpm, tmp_path):
    """The proxy starts with a certificate that ends in 30 s; it is renewed on disk (the record's refresh, as a
    renewal does); once the first one has ended, requests through the proxy still reach the registry."""
    host = f"localhost:{registry.port}"
    key = tpm.create_key("ecc-p256", tmp_path / "client.key")
    ends = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=30)  # start-up room on a busy machine
    cert = _client_cert(pki, key.public_key(), tmp_path / "client.cert", ends=ends)
    record = RenewalRecord.for_files(cert, tmp_path / "client.key")
    record.source = dict(ACME)
    copy = record.install("certs.d", tmp_path / "certs.d" / host, {"ca.crt": (pki.ca_file.read_bytes(), 0o644)})
    with RegistryProxyProcess(tmp_path, test_tpm.env, "--upstream", host, "--cert-dir", str(copy),
                              "--listen", "127.0.0.1:0") as proxy:
        def v2() -> int:
            try:
                with urllib.request.urlopen(f"http://{proxy.address}/v2/", timeout=30) as r:  # noqa: S310
                    return r.status
            except urllib.error.HTTPError as e:
                return e.code

        assert v2() == 200
        _client_cert(pki, key.public_key(), cert, ends=ends + datetime.timedelta(days=1))  # renewed
        record.refresh()
        while datetime.datetime.now(datetime.timezone.utc) < ends + datetime.timedelta(seconds=1):  # bounded: 31 s
            time.sleep(0.5)
        assert v2() == 200, "\n".join(proxy.lines())
        assert any("changed on disk (renewed): new upstream connections use it" in x for x in proxy.lines())
