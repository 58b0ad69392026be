"""The Attestation CA exchange: EK certificate → AK certificate that step-ca's checks accept."""

from __future__ import annotations

import base64
import copy

import pytest
import requests
from cryptography import x509

import tpmtls
from support.attest import EkCa, ek_machine, enroll_files
from support.commands import require
from tpmtls.enroll.acme_server import EnrollApp, EnrollServer
from tpmtls.enroll.attest_errors import EnrollError
from tpmtls.enroll.attest_verify import (
    ek_urn,
    permanent_identifiers,
    tpm_hardware_details,
    validate_ak_certificate,
)
from tpmtls.enroll.attestation import attest_request, obtain_ak_certificate, post_json
from tpmtls.tpm import attest


@pytest.fixture(scope="module")
def machine_a(enroll_server):
    """(tpm, server, session): machine A's TPM, the enroll-server, and HTTPS to it."""
    return enroll_server.tpm, enroll_server.server, enroll_server.session()


def test_ek_certificate_is_read_from_nv(machine_a):
    tpm, _, _ = machine_a
    ek = attest.read_ek(tpm, "rsa")
    cert = x509.load_der_x509_certificate(ek.certificate)
    assert cert.public_key().public_numbers().n.to_bytes(256, "big") == bytes(ek.public.publicArea.unique.rsa)


def test_exchange_issues_an_ak_certificate_step_ca_accepts(machine_a):
    tpm, server, session = machine_a
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


def test_second_use_of_an_activated_secret_is_refused(machine_a):
    tpm, server, session = machine_a
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


def test_credential_for_another_ek_cannot_be_activated(machine_a):
    """A credential encrypted to an EK this TPM does not hold: ActivateCredential fails in the TPM."""
    tpm, server, session = machine_a
    ek = attest.read_ek(tpm, "rsa")
    ak = attest.create_ak(tpm)
    answer = post_json(session, server.url + "/attest", attest_request(tpm, ek, ak))
    other_ak = attest.create_ak(tpm)  # the credential names `ak`, not this one
    with pytest.raises(tpmtls.TpmtlsError):
        attest.activate_credential(tpm, other_ak.blob, "rsa", base64.b64decode(answer["credential"]),
                                   base64.b64decode(answer["secret"]))


def _provision_ecc_ek(tpm, ek_ca) -> None:
    """Play manufacturer: certify the low-range ECC P-256 EK with the EK CA's intermediate, store it in NV."""
    import datetime

    from cryptography.hazmat.primitives import hashes, serialization
    from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPMA_NV
    from tpm2_pytss.types import TPM2B_NV_PUBLIC, TPMS_NV_PUBLIC
    from tpm2_pytss.utils import NVReadEK, create_ek_template

    from tpmtls.enroll.attest_verify import (
        OID_TPM_MANUFACTURER,
        OID_TPM_MODEL,
        OID_TPM_VERSION,
    )

    state = ek_ca.dir / "state"
    issuer_key = serialization.load_pem_private_key((state / "signkey.pem").read_bytes(), None)
    issuer = x509.load_pem_x509_certificate((state / "issuercert.pem").read_bytes())

    def fn(ctx):  # type: ignore[no-untyped-def]
        esapi = ctx.esapi
        _, template = create_ek_template("EK-ECC256", NVReadEK(esapi))
        handle, public, _, _, _ = esapi.create_primary(None, template, ESYS_TR.ENDORSEMENT)
        esapi.flush_context(handle)
        key = serialization.load_pem_public_key(public.to_pem())
        now = datetime.datetime.now(datetime.timezone.utc)
        hw = x509.Name([x509.NameAttribute(OID_TPM_MANUFACTURER, "id:00001014"),
                        x509.NameAttribute(OID_TPM_MODEL, "swtpm"), x509.NameAttribute(OID_TPM_VERSION, "id:20191023")])
        cert = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(issuer.subject).public_key(key)
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=365))
                .add_extension(x509.SubjectAlternativeName([x509.DirectoryName(hw)]), critical=True)
                .sign(issuer_key, hashes.SHA256()))
        # a TCG NV header (0x10 0x01 + length) and padding, as some TPMs store it: the CA must cope
        der = cert.public_bytes(serialization.Encoding.DER)
        data = b"\x10\x01" + len(der).to_bytes(2, "big") + der + b"\xff" * 13
        attrs = (TPMA_NV.PPWRITE | TPMA_NV.PPREAD | TPMA_NV.OWNERREAD | TPMA_NV.AUTHREAD | TPMA_NV.NO_DA
                 | TPMA_NV.PLATFORMCREATE)
        nv_public = TPM2B_NV_PUBLIC(nvPublic=TPMS_NV_PUBLIC(nvIndex=0x01C0000A, nameAlg=TPM2_ALG.SHA256,
                                                            attributes=attrs, dataSize=len(data)))
        nv = esapi.nv_define_space(b"", nv_public, auth_handle=ESYS_TR.RH_PLATFORM)
        for off in range(0, len(data), 512):
            esapi.nv_write(nv, data[off:off + 512], off, auth_handle=ESYS_TR.RH_PLATFORM)

    tpm.pool.run("provision ECC EK certificate", fn)


def test_ecc_ek_with_nv_header_and_padding(tmp_path):
    """A second machine whose ECC P-256 EK certificate sits in NV behind a TCG header, with padding."""
    require("swtpm", "swtpm_setup", "swtpm_localca", "tpm2-abrmd")
    ek_ca = EkCa(tmp_path / "ekca")
    machine = ek_machine(tmp_path / "m", ek_ca)
    try:
        with tpmtls.Pool(machine.tcti) as pool:
            tpm = tpmtls.connect(pool=pool)
            _provision_ecc_ek(tpm, ek_ca)
            raw = attest.read_ek(tpm, "ecc").certificate
            assert raw[:2] == b"\x10\x01" and raw.endswith(b"\xff" * 13)
            ca_dir, roots, policy = enroll_files(tmp_path / "server", ek_ca, tpm)
            with EnrollServer(EnrollApp(ca_dir, roots, policy)) as server:
                session = requests.Session()
                session.verify = str(ca_dir / "ca.crt")
                cred = obtain_ak_certificate(tpm, server.url, session, ek_kind="ecc")
                validate_ak_certificate(cred.certificate)
                assert tpm_hardware_details(cred.certificate, "ak")["model"] == "swtpm"
    finally:
        machine.stop()


def test_high_range_ecc_p384_ek_from_swtpm_setup(machine_a):
    """swtpm_setup's ECC EK is the high-range P-384 one (policy B = PolicyOR(A, C)): attest with it."""
    tpm, server, session = machine_a
    ek = attest.read_ek(tpm, "ecc")
    assert ek.template == "EK-HIGH-ECC384"
    cred = obtain_ak_certificate(tpm, server.url, session, ek_kind="ecc")
    cert = x509.load_der_x509_certificate(ek.certificate)
    assert cred.identifier == ek_urn(cert.public_key())


def test_ek_policies_match_the_tcg_templates():
    """PolicyB computed here is the authPolicy tpm2-pytss's high-range templates carry."""
    from tpm2_pytss.utils import NoSuchIndex, create_ek_template

    calls = []

    def nv(index):  # type: ignore[no-untyped-def]
        calls.append(index)
        if len(calls) % 2 == 1:
            return b"cert"
        raise NoSuchIndex(index)

    for name, hash_name in (("EK-HIGH-RSA2048", "sha256"), ("EK-HIGH-ECC384", "sha384"), ("EK-HIGH-RSA4096", "sha384")):
        calls.clear()
        _, template = create_ek_template(name, nv)
        assert bytes(template.publicArea.authPolicy) == attest.ek_policies(hash_name)[2], name
    _, low = create_ek_template("EK-RSA2048", lambda i: (_ for _ in ()).throw(NoSuchIndex(i)))
    assert bytes(low.publicArea.authPolicy) == attest.ek_policies("sha256")[0]
