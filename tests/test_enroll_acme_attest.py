"""The Attestation CA exchange: EK certificate → AK certificate that step-ca's checks accept."""

from __future__ import annotations

import base64
import copy

import pytest
import requests
from cryptography import x509

import tpmtls
from attest_env import EkCa, ek_machine, enroll_files
from conftest import require
from tpmtls.enroll.acme_server import EnrollApp, EnrollServer
from tpmtls.enroll.attest_errors import EnrollError
from tpmtls.enroll.attest_verify import ek_urn, permanent_identifiers, tpm_hardware_details, validate_ak_certificate
from tpmtls.enroll.attestation import attest_request, obtain_ak_certificate, post_json
from tpmtls.tpm import attest


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    require("swtpm", "swtpm_setup", "swtpm_localca", "tpm2-abrmd")
    tmp = tmp_path_factory.mktemp("attest")
    ek_ca = EkCa(tmp / "ekca")
    machine = ek_machine(tmp / "a", ek_ca)
    pool = tpmtls.Pool(machine.tcti)
    tpm = tpmtls.connect(pool=pool)
    ca_dir, roots, policy = enroll_files(tmp / "server", ek_ca, tpm)
    app = EnrollApp(ca_dir, roots, policy)
    server = EnrollServer(app).start()
    session = requests.Session()
    session.verify = str(ca_dir / "ca.crt")
    yield tpm, server, session
    server.stop()
    pool.close()
    machine.stop()


def test_ek_certificate_is_read_from_nv(env):
    tpm, _, _ = env
    ek = attest.read_ek(tpm, "rsa")
    cert = x509.load_der_x509_certificate(ek.certificate)
    assert cert.public_key().public_numbers().n.to_bytes(256, "big") == bytes(ek.public.publicArea.unique.rsa)


def test_exchange_issues_an_ak_certificate_step_ca_accepts(env):
    tpm, server, session = env
    cred = obtain_ak_certificate(tpm, server.url, session)
    cert = cred.certificate
    validate_ak_certificate(cert)  # step-ca's profile: v3, empty subject, not CA, EKU, TPM details
    ek = attest.read_ek(tpm, "rsa")
    ek_cert = x509.load_der_x509_certificate(ek.certificate)
    assert permanent_identifiers(cert, "ak") == [ek_urn(ek_cert.public_key())] == [cred.identifier]
    assert tpm_hardware_details(cert, "ak")["model"] == tpm_hardware_details(ek_cert, "ek")["model"]
    issuer = x509.load_der_x509_certificate(cred.chain[1])
    cert.verify_directly_issued_by(issuer)
    assert issuer == server.app.attestation_ca.cert
    assert server.app.attestation_ca.issued >= 1


def test_second_use_of_an_activated_secret_is_refused(env):
    tpm, server, session = env
    ek = attest.read_ek(tpm, "rsa")
    ak = attest.create_ak(tpm)
    answer = post_json(session, server.url + "/attest", attest_request(tpm, ek, ak))
    from tpmtls.enroll.attestation import secret_request

    body = secret_request(tpm, ak, answer, server.url, "rsa")
    before = server.app.attestation_ca.issued
    post_json(session, server.url + "/secret", copy.deepcopy(body))
    with pytest.raises(EnrollError, match="unknown or already used secret"):
        post_json(session, server.url + "/secret", body)
    assert server.app.attestation_ca.issued == before + 1


def test_credential_for_another_ek_cannot_be_activated(env):
    """A credential encrypted to an EK this TPM does not hold: ActivateCredential fails in the TPM."""
    tpm, server, session = env
    ek = attest.read_ek(tpm, "rsa")
    ak = attest.create_ak(tpm)
    answer = post_json(session, server.url + "/attest", attest_request(tpm, ek, ak))
    other_ak = attest.create_ak(tpm)  # the credential names `ak`, not this one
    with pytest.raises(tpmtls.TpmtlsError):
        attest.activate_credential(tpm, other_ak.blob, "rsa", base64.b64decode(answer["credential"]),
                                   base64.b64decode(answer["secret"]))
