"""Fuzz every CBOR/DER/TPM/JOSE structure the enroll-server parses: one refusal each, no crash, no hang.

Start from a genuine enrollment of a software TPM, then feed the server's parsers that
input with one structure truncated (a spread of lengths) or one bit flipped (seeded
positions). Each mutant must end in a `Refusal` — never another exception, never a pass.
"""

from __future__ import annotations

import base64
import hashlib
import random
from typing import Callable

import cbor2
import pytest
import requests
from cryptography.hazmat.primitives import serialization

from tpmtls.enroll.acme_attobj import QUOTE_KEY, verify_att_obj
from tpmtls.enroll.acme_client import Enroller, EnrollOptions
from tpmtls.enroll.attest_errors import Refusal
from tpmtls.enroll.attestation import attest_request
from tpmtls.tpm import attest

TRUNCATIONS = 16
FLIPS = 32


def mutants(data: bytes, seed: str) -> list[bytes]:
    """Truncations at spread lengths (0 … len-1) and single-bit flips at seeded positions; bounded count."""
    rng = random.Random(hashlib.sha256(seed.encode()).digest())
    out = {data[:n] for n in sorted({0, 1, len(data) - 1, *(len(data) * i // TRUNCATIONS for i in range(TRUNCATIONS))})
           if n < len(data)}
    for _ in range(FLIPS):
        bit = rng.randrange(len(data) * 8)
        out.add(data[:bit // 8] + bytes([data[bit // 8] ^ (1 << (bit % 8))]) + data[bit // 8 + 1:])
    out.discard(data)
    return sorted(out)


def all_refused(label: str, original: bytes, check: Callable[[bytes], object]) -> int:
    count = 0
    for m in mutants(original, label):
        try:
            check(m)
        except Refusal:
            count += 1
            continue
        at = next((i for i, (a, b) in enumerate(zip(original, m, strict=False)) if a != b), min(len(m), len(original)))
        pytest.fail(f"{label}: mutant of {len(m)} bytes (of {len(original)}) was accepted; first difference at "
                    f"byte {at}: {original[max(0, at - 8):at + 8].hex()} -> {m[max(0, at - 8):at + 8].hex()}")
    assert count >= 10, label
    return count


class Recorder(Enroller):
    """A genuine enrollment that keeps what it sent."""

    seen: dict[str, object] = {}

    def att_obj(self, cred, key, key_authorization):  # type: ignore[no-untyped-def]
        att = super().att_obj(cred, key, key_authorization)
        Recorder.seen.update(att=att, key_auth=key_authorization)
        return att

    def csr(self, key, identifier):  # type: ignore[no-untyped-def]
        csr = super().csr(key, identifier)
        Recorder.seen["csr"] = csr.public_bytes(serialization.Encoding.DER)
        return csr


@pytest.fixture(scope="module")
def recorded_enrollment(enroll_server):
    """(tmp, tpm, app, server) after one genuine enrollment of machine A, what it sent kept in `Recorder.seen`."""
    w = enroll_server
    Recorder(w.tpm, EnrollOptions(w.server.directory_url, cafile=str(w.ca_dir / "ca.crt"), key_out=w.tmp / "k",
                                  cert_out=w.tmp / "c")).run()
    return w.tmp, w.tpm, w.app, w.server


@pytest.mark.timeout(600)
def test_attobj_and_each_structure_inside_it(recorded_enrollment):
    _, _, app, _ = recorded_enrollment
    att, key_auth = Recorder.seen["att"], Recorder.seen["key_auth"]
    verify_att_obj(att, key_auth, app.ak_roots, app.policy)  # the genuine one passes
    total = all_refused("attObj", att, lambda m: verify_att_obj(m, key_auth, app.ak_roots, app.policy))
    stmt = cbor2.loads(att)["attStmt"]
    quote = stmt[QUOTE_KEY]
    for field in ("x5c[0]", "pubArea", "certInfo", "sig", "quote.quoted", "quote.sig"):
        original = stmt["x5c"][0] if field == "x5c[0]" else quote[field[6:]] if field.startswith("quote.") else stmt[field]

        def check(m: bytes, field: str = field) -> object:
            if field == "x5c[0]":
                changed = dict(stmt, x5c=[m, *stmt["x5c"][1:]])
            elif field.startswith("quote."):
                changed = dict(stmt, **{QUOTE_KEY: dict(quote, **{field[6:]: m})})
            else:
                changed = dict(stmt, **{field: m})
            return verify_att_obj(cbor2.dumps({"fmt": "tpm", "attStmt": changed}), key_auth, app.ak_roots, app.policy)

        total += all_refused(field, original, check)
    assert total > 100


@pytest.mark.timeout(600)
def test_attestation_ca_request_structures(recorded_enrollment):
    _, tpm, app, _ = recorded_enrollment
    ca = app.attestation_ca
    body = attest_request(tpm, attest.read_ek(tpm), attest.create_ak(tpm))
    ca.attest(body)  # the genuine request passes
    fields = {"ekCerts[0]": lambda b, v: b.update(ekCerts=[v]), "ek": lambda b, v: b.update(ek=v)}
    for name in ("public", "createData", "createAttestation", "createSignature"):
        fields[f"params.{name}"] = lambda b, v, name=name: b["params"].update({name: v})
    for label, put in fields.items():
        original = base64.b64decode(body["ekCerts"][0] if label == "ekCerts[0]" else body["ek"] if label == "ek"
                                    else body["params"][label.split(".")[1]])

        def check(m: bytes, put=put) -> object:
            changed = {**body, "params": dict(body["params"])}
            put(changed, base64.b64encode(m).decode())
            return ca.attest(changed)

        all_refused(label, original, check)


@pytest.mark.timeout(600)
def test_quote_structures(recorded_enrollment):
    _, tpm, app, _ = recorded_enrollment
    policy = app.attestation_ca.policy
    ak = attest.create_ak(tpm)
    nonce = b"\x5a" * 32
    quoted, sig = attest.quote(tpm, ak.blob, nonce, policy.selection)
    values = attest.read_pcrs(tpm, policy.selection)
    reported = {bank: {str(p): v.hex() for p, v in vals.items()} for bank, vals in values.items()}
    from tpm2_pytss.types import TPMT_PUBLIC

    from tpmtls.enroll.attest_verify import tpm_public_key

    ak_key = tpm_public_key(TPMT_PUBLIC.unmarshal(ak.public)[0], "ak")
    policy.check_quote(ak_key, quoted, sig, reported, nonce)  # the genuine quote passes
    all_refused("quote.quoted", quoted, lambda m: policy.check_quote(ak_key, m, sig, reported, nonce))
    all_refused("quote.signature", sig, lambda m: policy.check_quote(ak_key, quoted, m, reported, nonce))


@pytest.mark.timeout(600)
def test_csr_and_jws_over_http(recorded_enrollment):
    """Finalize's CSR parser refuses every mutant; mutated JWS bodies get problem documents from the server, never a 5xx."""
    tmp, _, app, server = recorded_enrollment
    verify = str(tmp / "server" / "ca" / "ca.crt")
    csr = Recorder.seen["csr"]
    from tpmtls.enroll.attest_verify import load_der_csr

    load_der_csr(csr)  # the genuine one passes
    all_refused("csr", csr, load_der_csr)

    import josepy as jose
    from acme import client as acme_client
    from acme import messages
    from cryptography.hazmat.primitives.asymmetric import ec

    key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    net = acme_client.ClientNetwork(key, alg=jose.ES256, verify_ssl=verify)
    directory = acme_client.ClientV2.get_directory(server.directory_url, net)
    url = directory["newAccount"]
    nonce = requests.head(directory["newNonce"], verify=verify, timeout=30).headers["Replay-Nonce"]
    reg = messages.NewRegistration.from_data(terms_of_service_agreed=True)
    body = net._wrap_in_jws(reg, jose.decode_b64jose(nonce), url).encode()
    statuses = set()
    for m in mutants(body, "jws"):
        resp = requests.post(url, data=m, headers={"Content-Type": "application/jose+json"}, verify=verify, timeout=30)
        assert resp.headers["Content-Type"] == "application/problem+json", (resp.status_code, m[:80])
        assert 400 <= resp.status_code < 500 and "serverInternal" not in resp.text, resp.text
        statuses.add(resp.json()["type"].rsplit(":", 1)[-1])
    assert statuses <= {"malformed", "badNonce", "unauthorized", "badSignatureAlgorithm", "accountDoesNotExist"}
    assert requests.get(server.directory_url, verify=verify, timeout=30).status_code == 200  # still serving


@pytest.mark.timeout(600)
def test_attestation_ca_json_over_http(recorded_enrollment):
    """Mutated /attest and /secret bodies: a problem document each (4xx), never a 5xx; the server keeps serving."""
    import json

    tmp, tpm, app, server = recorded_enrollment
    verify = str(tmp / "server" / "ca" / "ca.crt")
    body = json.dumps(attest_request(tpm, attest.read_ek(tpm), attest.create_ak(tpm))).encode()
    secret = json.dumps({"secret": base64.b64encode(b"\x01" * 32).decode(),
                         "quote": {"quoted": "AAAA", "signature": "AAAA", "pcrs": {}}}).encode()
    issued = app.attestation_ca.issued
    for path, original in (("/attest", body), ("/secret", secret)):
        for m in mutants(original, path):
            resp = requests.post(server.url + path, data=m, headers={"Content-Type": "application/json"},
                                 verify=verify, timeout=30)
            if resp.status_code == 200:  # a flip inside base64 padding or an ignored field can leave the request valid
                assert path == "/attest" and set(resp.json()) >= {"credential", "secret", "nonce"}
                continue
            assert resp.headers["Content-Type"] == "application/problem+json", (path, resp.status_code)
            assert 400 <= resp.status_code < 500 and "serverInternal" not in resp.text, resp.text
    assert app.attestation_ca.issued == issued  # no AK certificate without a real activation
    assert requests.get(server.directory_url, verify=verify, timeout=30).status_code == 200
