"""Every refusal names its reason and issues nothing: replays, foreign EK CA, PCRs, key kinds, CSR, nonces.

Machines A and B have EK certificates from the same private swtpm_localca; C from another.
Rogue clients are `Enroller` subclasses that change one step, talking to a real server.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import josepy as jose
import pytest
import requests
from acme import client as acme_client
from acme import messages
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG
from tpm2_pytss.types import TPML_DIGEST_VALUES, TPMT_HA

import tpmtls
from support.attest import Clock, EkCa, ek_machine, enroll_world
from support.commands import require
from tpmtls.enroll.acme_client import Enroller, EnrollOptions
from tpmtls.enroll.acme_server import NONCE_TTL
from tpmtls.enroll.attest_ca import SESSION_TTL
from tpmtls.enroll.attest_errors import EnrollError
from tpmtls.enroll.attestation import attest_request, post_json, secret_request
from tpmtls.tpm import attest
from tpmtls.tpm.keys import make_key


@pytest.fixture(scope="module")
def machines_abc(tmp_path_factory):
    """(tmp, tpms, app, server, clock): machines A and B with EK certificates of the EK CA the
    enroll-server trusts, C of another; the server's policy is A's PCRs, its clock a `Clock`."""
    require("swtpm", "swtpm_setup", "swtpm_localca", "tpm2-abrmd")
    tmp = tmp_path_factory.mktemp("refusals")
    clock = Clock()
    with enroll_world(tmp, clock=clock) as a:
        other_ca = EkCa(tmp / "other-ekca", manufacturer="elsewhere")
        machines = {"B": ek_machine(tmp / "b", a.ek_ca), "C": ek_machine(tmp / "c", other_ca)}
        pools = {k: tpmtls.Pool(m.tcti) for k, m in machines.items()}
        tpms = {"A": a.tpm, **{k: tpmtls.connect(pool=p) for k, p in pools.items()}}
        try:
            yield tmp, tpms, a.app, a.server, clock
        finally:
            for p in pools.values():
                p.close()
            for m in machines.values():
                m.stop()


def options(machines_abc, tmp_path: Path, name: str = "x") -> EnrollOptions:
    tmp, _, app, server, _ = machines_abc
    return EnrollOptions(server.directory_url, cafile=str(tmp / "server" / "ca" / "ca.crt"),
                         key_out=tmp_path / f"{name}.key", cert_out=tmp_path / f"{name}.cert")


def _session(machines_abc) -> requests.Session:
    """HTTPS to the enroll-server, trusting its CA only."""
    session = requests.Session()
    session.verify = str(machines_abc[0] / "server" / "ca" / "ca.crt")
    return session


def refused(machines_abc, enroller: Enroller, match: str) -> str:
    """Run a rogue enrollment: it must fail with `match`, issue no client certificate and write no file."""
    app = machines_abc[2]
    before = (app.stats.issued, sorted(app.issued_dir.glob("*.pem")) if app.issued_dir.exists() else [])
    with pytest.raises(EnrollError, match=match) as info:
        enroller.run()
    after = (app.stats.issued, sorted(app.issued_dir.glob("*.pem")) if app.issued_dir.exists() else [])
    assert after == before
    assert not enroller.o.key_out.exists() and not enroller.o.cert_out.exists()
    assert "\n" not in str(info.value)
    return str(info.value)


class Recording(Enroller):
    att: bytes = b""

    def att_obj(self, cred, key, key_authorization):  # type: ignore[no-untyped-def]
        Recording.att = super().att_obj(cred, key, key_authorization)
        return Recording.att


class Replaying(Enroller):
    def att_obj(self, cred, key, key_authorization):  # type: ignore[no-untyped-def]
        return Recording.att


def test_machine_b_replaying_a_s_attobj_is_refused(machines_abc, tmp_path):
    _, tpms, *_ = machines_abc
    Recording(tpms["A"], options(machines_abc, tmp_path, "a")).run()
    assert Recording.att
    msg = refused(machines_abc, Replaying(tpms["B"], options(machines_abc, tmp_path, "b")), "badAttestationStatement")
    assert "key authorization invalid" in msg


def test_replaying_a_s_credential_answer_is_refused(machines_abc):
    _, tpms, app, server, _ = machines_abc
    session = _session(machines_abc)
    a_ek, a_ak = attest.read_ek(tpms["A"]), attest.create_ak(tpms["A"])
    answer = post_json(session, server.url + "/attest", attest_request(tpms["A"], a_ek, a_ak))
    body = secret_request(tpms["A"], a_ak, answer, server.url, "rsa")
    issued = app.attestation_ca.issued
    post_json(session, server.url + "/secret", copy.deepcopy(body))
    with pytest.raises(EnrollError, match="unknown or already used secret"):
        post_json(session, server.url + "/secret", body)  # B replays A's answer
    # B sends A's EK certificate with its own AK: the credential is sealed to A's EK, B cannot open it.
    b_ak = attest.create_ak(tpms["B"])
    answer = post_json(session, server.url + "/attest", attest_request(tpms["A"], a_ek, b_ak))
    with pytest.raises(tpmtls.TpmtlsError, match="activate credential"):
        secret_request(tpms["B"], b_ak, answer, server.url, "rsa")
    assert app.attestation_ca.issued == issued + 1


def test_ek_certificate_from_another_ca_is_refused(machines_abc, tmp_path):
    msg = refused(machines_abc, Enroller(machines_abc[1]["C"], options(machines_abc, tmp_path)), "does not chain to a trusted CA")
    assert "the EK certificate" in msg


def test_imported_key_is_refused(machines_abc, tmp_path):
    tpm = machines_abc[1]["A"]

    class Imported(Enroller):
        def tls_key(self):  # type: ignore[no-untyped-def]
            pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
            return tpm.import_key(pem)

    assert "not fixedTPM" in refused(machines_abc, Imported(tpm, options(machines_abc, tmp_path)), "badAttestationStatement")


def test_restricted_key_is_refused(machines_abc, tmp_path):
    tpm = machines_abc[1]["A"]

    class Restricted(Enroller):
        def attested_key(self, key):  # type: ignore[no-untyped-def]
            ak = attest.create_ak(tpm)
            return make_key(tpm.pool, ak.blob, ak.blob.public)

    assert "restricted" in refused(machines_abc, Restricted(tpm, options(machines_abc, tmp_path)), "badAttestationStatement")


def test_csr_for_another_key_is_refused(machines_abc, tmp_path):
    tpm = machines_abc[1]["A"]

    class OtherCsr(Enroller):
        def csr(self, key, identifier):  # type: ignore[no-untyped-def]
            return super().csr(tpm.create_key("ecc-p256"), identifier)

    msg = refused(machines_abc, OtherCsr(tpm, options(machines_abc, tmp_path)), "unauthorized")
    assert "csr does not match the attested key" in msg


def test_identifier_not_attested_is_refused(machines_abc, tmp_path):
    opts = options(machines_abc, tmp_path)
    opts.identifier = "urn:ek:sha256:somebody-else"
    msg = refused(machines_abc, Enroller(machines_abc[1]["A"], opts), "permanent identifier does not match")
    assert "badAttestationStatement" in msg


def _account(machines_abc):
    """An ACME account on the server, and its signed-request helper (acme's own network layer)."""
    tmp, _, app, server, _ = machines_abc
    key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    net = acme_client.ClientNetwork(key, alg=jose.ES256, verify_ssl=str(tmp / "server" / "ca" / "ca.crt"))
    directory = acme_client.ClientV2.get_directory(server.directory_url, net)
    acme = acme_client.ClientV2(directory, net)
    net.account = acme.new_account(messages.NewRegistration.from_data(terms_of_service_agreed=True))
    return net, directory


def _post_with_nonce(net, url: str, nonce: str) -> requests.Response:
    order = messages.NewOrder(identifiers=(messages.Identifier(typ=messages.IDENTIFIER_FQDN, value="example.org"),))
    body = net._wrap_in_jws(order, jose.decode_b64jose(nonce), url)
    return requests.post(url, data=body, headers={"Content-Type": "application/jose+json"}, timeout=30,
                         verify=net.verify_ssl)


def test_reused_nonce_is_refused(machines_abc):
    _, _, app, server, _ = machines_abc
    net, directory = _account(machines_abc)
    nonce = requests.head(directory["newNonce"], verify=net.verify_ssl, timeout=30).headers["Replay-Nonce"]
    first = _post_with_nonce(net, directory["newOrder"], nonce)
    assert first.status_code == 400 and "permanent-identifier identifiers only" in first.json()["detail"]
    again = _post_with_nonce(net, directory["newOrder"], nonce)
    assert again.status_code == 400
    assert again.headers["Content-Type"] == "application/problem+json"
    assert again.json()["type"] == "urn:ietf:params:acme:error:badNonce"
    assert again.json()["detail"] == "unknown or already used nonce"


def test_expired_nonce_is_refused(machines_abc):
    clock = machines_abc[4]
    net, directory = _account(machines_abc)
    nonce = requests.head(directory["newNonce"], verify=net.verify_ssl, timeout=30).headers["Replay-Nonce"]
    clock.offset += NONCE_TTL + 1
    try:
        resp = _post_with_nonce(net, directory["newOrder"], nonce)
    finally:
        clock.offset -= NONCE_TTL + 1
    assert resp.status_code == 400 and resp.json()["detail"] == "expired nonce"


def test_expired_attestation_nonce_is_refused(machines_abc):
    _, tpms, app, server, clock = machines_abc
    session = _session(machines_abc)
    ek, ak = attest.read_ek(tpms["A"]), attest.create_ak(tpms["A"])
    answer = post_json(session, server.url + "/attest", attest_request(tpms["A"], ek, ak))
    body = secret_request(tpms["A"], ak, answer, server.url, "rsa")
    issued = app.attestation_ca.issued
    clock.offset += SESSION_TTL + 1
    try:
        with pytest.raises(EnrollError, match="the credential expired"):
            post_json(session, server.url + "/secret", body)
    finally:
        clock.offset -= SESSION_TTL + 1
    assert app.attestation_ca.issued == issued


def test_quote_over_another_nonce_is_refused(machines_abc):
    _, tpms, app, server, _ = machines_abc
    session = _session(machines_abc)
    ek, ak = attest.read_ek(tpms["A"]), attest.create_ak(tpms["A"])
    answer = post_json(session, server.url + "/attest", attest_request(tpms["A"], ek, ak))
    answer["nonce"] = "AAAA" * 11  # the client quotes over a nonce of its choosing
    with pytest.raises(EnrollError, match="not over this session's nonce"):
        post_json(session, server.url + "/secret", secret_request(tpms["A"], ak, answer, server.url, "rsa"))


def test_pcr_outside_the_policy_is_refused(machines_abc, tmp_path):
    """Run last in this module: it extends PCR 7 of machine B for good."""
    tpm = machines_abc[1]["B"]

    def extend(ctx):  # type: ignore[no-untyped-def]
        ha = TPMT_HA(hashAlg=TPM2_ALG.SHA256)
        ha.digest.sha256 = b"\x11" * 32
        ctx.esapi.pcr_extend(ESYS_TR.PCR7, TPML_DIGEST_VALUES([ha]))

    tpm.pool.run("extend PCR 7", extend)
    msg = refused(machines_abc, Enroller(tpm, options(machines_abc, tmp_path)), "is not allowed by the policy")
    assert "PCR sha256:7 = " in msg
    assert json.loads((machines_abc[0] / "server" / "policy.json").read_text())["pcrs"]["sha256"]["7"]
