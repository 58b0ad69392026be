"""What the server decides, not the client: EK hygiene, the PCR policy per certificate, certificate fields, JWS headers.

Machines A (the policy's reference) and B have EK certificates from one private EK CA. Each
refusal here passed before (noted per test): a weak or deny-listed or revoked EK, a machine
whose PCRs left the policy after its AK certificate, CSR subject attributes, an unprotected
JWS header.
"""

from __future__ import annotations

import base64
import datetime
import json
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG
from tpm2_pytss.types import TPML_DIGEST_VALUES, TPMT_HA

import tpmtls
from support.attest import EkCa, busy_limits, busy_settings, ek_machine, enroll_files
from support.commands import require
from support.enroll_server import es256_jws, public_jwk
from support.roca import roca_rsa_key
from tpmtls.enroll.acme_client import Enroller, EnrollOptions
from tpmtls.enroll.acme_server import EnrollApp, EnrollServer
from tpmtls.enroll.attest_errors import EnrollError
from tpmtls.enroll.attest_verify import ek_urn
from tpmtls.enroll.attestation import attest_request, obtain_ak_certificate, post_json
from tpmtls.enroll.ek_hygiene import roca_fingerprint
from tpmtls.pki.csr import build_csr
from tpmtls.tpm import attest


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    require("swtpm", "swtpm_setup", "swtpm_localca", "tpm2-abrmd")
    tmp = tmp_path_factory.mktemp("policy")
    ek_ca = EkCa(tmp / "ekca")
    machines = {"A": ek_machine(tmp / "a", ek_ca), "B": ek_machine(tmp / "b", ek_ca)}
    pools = {k: tpmtls.Pool(m.tcti) for k, m in machines.items()}
    tpms = {k: tpmtls.connect(pool=p) for k, p in pools.items()}
    ca_dir, roots, policy = enroll_files(tmp / "server", ek_ca, tpms["A"])
    yield tmp, ek_ca, tpms, (ca_dir, roots, policy)
    for p in pools.values():
        p.close()
    for m in machines.values():
        m.stop()


@contextmanager
def server(world, name: str, **options):
    tmp, _, _, files = world
    app = EnrollApp(*files, db=f"sqlite:{tmp / (name + '.db')}", settings=busy_settings(), **options)
    with EnrollServer(app, limits=busy_limits()) as srv:
        yield app, srv
    app.close()


def opts(world, srv, tmp_path: Path, name: str = "x") -> EnrollOptions:
    return EnrollOptions(srv.directory_url, cafile=str(world[3][0] / "ca.crt"), key_out=tmp_path / f"{name}.key",
                         cert_out=tmp_path / f"{name}.cert")


def session(world) -> requests.Session:
    s = requests.Session()
    s.verify = str(world[3][0] / "ca.crt")
    return s


def ek_cert_for(ek_ca: EkCa, public_key) -> bytes:
    """An EK certificate from the test's EK CA (its intermediate) for any key: what a maker would sign."""
    state = ek_ca.dir / "state"
    issuer_key = serialization.load_pem_private_key((state / "signkey.pem").read_bytes(), None)
    issuer = x509.load_pem_x509_certificate((state / "issuercert.pem").read_bytes())
    now = datetime.datetime.now(datetime.timezone.utc)
    from tpmtls.enroll.attest_verify import OID_TPM_MANUFACTURER, OID_TPM_MODEL, OID_TPM_VERSION

    hw = x509.Name([x509.NameAttribute(OID_TPM_MANUFACTURER, "id:49465800"), x509.NameAttribute(OID_TPM_MODEL, "SLB9670"),
                    x509.NameAttribute(OID_TPM_VERSION, "id:00070055")])
    cert = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(issuer.subject).public_key(public_key)
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName([x509.DirectoryName(hw)]), critical=True)
            .sign(issuer_key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.DER)


def test_roca_fingerprinted_ek_is_refused(world):
    """Before: /attest answered a credential for an EK certificate whose RSA key carries the ROCA fingerprint."""
    _, ek_ca, tpms, _ = world
    weak = roca_rsa_key()
    assert roca_fingerprint(weak.public_key().public_numbers().n)
    assert not roca_fingerprint(x509.load_der_x509_certificate(attest.read_ek(tpms["A"]).certificate)
                                .public_key().public_numbers().n)
    body = attest_request(tpms["A"], attest.read_ek(tpms["A"]), attest.create_ak(tpms["A"]))
    body["ekCerts"] = [base64.b64encode(ek_cert_for(ek_ca, weak.public_key())).decode()]
    body["ek"] = base64.b64encode(weak.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    with server(world, "roca") as (app, srv):
        with pytest.raises(EnrollError, match=r"refused \(badAttestationStatement\): the EK is an RSA key with the ROCA "
                                              r"fingerprint \(CVE-2017-15361\)"):
            post_json(session(world), srv.url + "/attest", body)
        assert app.store.counts()["attest_sessions"] == 0


def test_deny_listed_ek_is_refused_at_attest_and_at_renewal(world, tmp_path):
    """Before: no deny list. An AK certificate obtained before the EK was listed no longer buys a certificate."""
    _, _, tpms, _ = world
    tpm = tpms["A"]
    deny = tmp_path / "deny.txt"
    deny.write_text("# EKs we no longer trust\n")
    urn = ek_urn(x509.load_der_x509_certificate(attest.read_ek(tpm).certificate).public_key())
    with server(world, "deny", ek_deny=deny) as (app, srv):
        cred = obtain_ak_certificate(tpm, srv.url, session(world))  # not listed yet
        deny.write_text(f"# EKs we no longer trust\n{urn}  # stolen laptop\n")  # re-read without a restart

        class Cached(Enroller):
            def ak_credential(self):  # type: ignore[no-untyped-def]
                return cred

        with pytest.raises(EnrollError, match=r"refused \(unauthorized\): the EK .* is on the EK deny list"):
            Cached(tpm, opts(world, srv, tmp_path)).run()
        with pytest.raises(EnrollError, match=r"/attest: refused \(unauthorized\): the EK urn:ek:sha256:\S+ is on the EK "
                                              "deny list"):
            obtain_ak_certificate(tpm, srv.url, session(world))
        assert app.stats.issued == 0
    deny.write_text("not-an-urn\n")
    with pytest.raises(EnrollError, match=r"deny.txt:1: not an EK identifier"):
        EnrollApp(*world[3], db=f"sqlite:{tmp_path / 'x.db'}", ek_deny=deny)


def test_ek_revoked_by_its_makers_crl_is_refused(world, tmp_path):
    """Before: no maker CRLs. The EK CA's intermediate revokes A's EK certificate; /attest refuses it."""
    _, ek_ca, tpms, _ = world
    state = ek_ca.dir / "state"
    issuer_key = serialization.load_pem_private_key((state / "signkey.pem").read_bytes(), None)
    issuer = x509.load_pem_x509_certificate((state / "issuercert.pem").read_bytes())
    ek_cert = x509.load_der_x509_certificate(attest.read_ek(tpms["A"]).certificate)
    now = datetime.datetime.now(datetime.timezone.utc)

    def crl(serials: list[int]) -> bytes:
        b = (x509.CertificateRevocationListBuilder().issuer_name(issuer.subject).last_update(now)
             .next_update(now + datetime.timedelta(days=7)))
        for s in serials:
            b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(s).revocation_date(now).build())
        return b.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    crls = tmp_path / "makers.crl"
    crls.write_bytes(crl([12345]))
    with server(world, "crl", ek_crls=crls) as (_, srv):
        obtain_ak_certificate(tpms["A"], srv.url, session(world))  # another serial revoked: fine
        crls.write_bytes(crl([12345, ek_cert.serial_number]))
        with pytest.raises(EnrollError, match=rf"refused \(unauthorized\): the EK certificate \(serial "
                                              rf"{ek_cert.serial_number:x}\) is revoked by its maker's CRL"):
            obtain_ak_certificate(tpms["A"], srv.url, session(world))
        obtain_ak_certificate(tpms["B"], srv.url, session(world))  # B's EK is not revoked


def test_certificate_fields_come_from_policy_not_from_the_csr(world, tmp_path):
    """Before: O=system:masters (and any other subject attribute) was copied into the certificate; 30 days."""
    tpm = world[2]["A"]

    class Greedy(Enroller):
        def csr(self, key, identifier):  # type: ignore[no-untyped-def]
            name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
                              x509.NameAttribute(NameOID.COMMON_NAME, identifier)])
            return self._tpm(build_csr, key, name, ["DNS:registry.example", "IP:10.0.0.1"])

    with server(world, "fields") as (_, srv):
        result = Greedy(tpm, opts(world, srv, tmp_path)).run()
    cert = result.certificate
    assert cert.subject == x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, result.identifier)])
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    life = cert.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)
    assert datetime.timedelta(hours=23) < life <= datetime.timedelta(hours=24)


def test_jws_fields_only_from_the_protected_header(world):
    """Before: nonce (and url, kid) were read from the unprotected header too (RFC 8555 6.2 forbids it)."""
    with server(world, "jws") as (app, srv):
        s, ca = requests.Session(), str(world[3][0] / "ca.crt")  # verify= per call: REQUESTS_CA_BUNDLE beats session.verify
        directory = s.get(srv.directory_url, timeout=30, verify=ca).json()
        key = ec.generate_private_key(ec.SECP256R1())
        url = directory["newAccount"]
        nonce = s.head(directory["newNonce"], timeout=30, verify=ca).headers["Replay-Nonce"]
        body = es256_jws(key, {"alg": "ES256", "jwk": public_jwk(key), "url": url}, {"termsOfServiceAgreed": True},
                         unprotected={"nonce": nonce})
        resp = s.post(url, data=body, headers={"Content-Type": "application/jose+json"}, timeout=30, verify=ca)
        assert resp.status_code == 400, resp.text
        assert resp.json()["type"] == "urn:ietf:params:acme:error:malformed"
        assert "unprotected header must not be used" in resp.json()["detail"]
        assert app.store.counts()["accounts"] == 0
        body = es256_jws(key, {"alg": "ES256", "jwk": public_jwk(key), "url": url, "nonce": nonce},
                         {"termsOfServiceAgreed": True})
        assert s.post(url, data=body, headers={"Content-Type": "application/jose+json"}, timeout=30,
                      verify=ca).status_code == 201


def test_pcrs_leaving_the_policy_after_the_ak_certificate_get_no_certificate(world, tmp_path):
    """Before: PCRs were checked once, for the AK certificate; PCR 0 extended afterwards, a certificate was issued.

    Runs last in this module: it extends machine B's PCR 0 for good.
    """
    tpm = world[2]["B"]
    with server(world, "pcrs") as (app, srv):
        first = Enroller(tpm, opts(world, srv, tmp_path, "first")).run()  # B matches the policy (same PCRs as A)
        cred = obtain_ak_certificate(tpm, srv.url, session(world))

        def extend(ctx):  # type: ignore[no-untyped-def]
            ha = TPMT_HA(hashAlg=TPM2_ALG.SHA256)
            ha.digest.sha256 = b"\x22" * 32
            ctx.esapi.pcr_extend(ESYS_TR.PCR0, TPML_DIGEST_VALUES([ha]))

        tpm.pool.run("extend PCR 0", extend)

        class Cached(Enroller):
            def ak_credential(self):  # type: ignore[no-untyped-def]
                return cred  # the AK certificate from before the change: still valid

        with pytest.raises(EnrollError, match=r"refused \(badAttestationStatement\): PCR sha256:0 = \w+ is not allowed"):
            Cached(tpm, opts(world, srv, tmp_path, "second")).run()
        renew = opts(world, srv, tmp_path, "first")
        renew.renew = True
        with pytest.raises(EnrollError, match=r"PCR sha256:0 = \w+ is not allowed by the policy"):
            Enroller(tpm, renew).run()
        assert app.stats.issued == 1
        assert first.cert_path.read_bytes() == first.certificate.public_bytes(serialization.Encoding.PEM) + \
            app.ca.cert.public_bytes(serialization.Encoding.PEM)
        orders = json.loads(json.dumps(app.store.counts()))
        assert orders["certificates"] == 1
