"""RFC 8555 as standard clients expect it: raw requests, certbot's `acme` library as a second client, Debian's lego.

Before this server's rework (tried with lego 4.9.1 and acme 5.9): no Link rel="index", 404
instead of 405 on GET of a POST resource, POST-as-GET on directory/newNonce refused, no account
or orders URL, badSignatureAlgorithm without `algorithms`, a 204 with Content-Length: 0, any
Content-Type accepted.
"""

from __future__ import annotations

import http.client
import os
import ssl
import subprocess

import josepy as jose
import pytest
import requests
from acme import client as acme_client
from acme import messages
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from support.attest import enroll_world
from support.commands import require
from support.enroll_server import es256_jws, public_jwk
from tpmtls.enroll.acme_client import PERMANENT_IDENTIFIER, Enroller, EnrollOptions

JOSE = {"Content-Type": "application/jose+json"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    require("swtpm", "swtpm_setup", "swtpm_localca", "tpm2-abrmd")
    with enroll_world(tmp_path_factory.mktemp("rfc8555")) as w:
        yield w


def ca(world) -> str:
    return str(world.ca_dir / "ca.crt")


def get(world, url: str, method: str = "GET", **kw) -> requests.Response:
    return requests.request(method, url, verify=ca(world), timeout=30, **kw)


def directory(world) -> dict:
    return get(world, world.server.directory_url).json()


def nonce(world) -> str:
    return get(world, directory(world)["newNonce"], "HEAD").headers["Replay-Nonce"]


def raw(world, path: str, method: str) -> http.client.HTTPResponse:
    """Headers exactly as sent (requests would normalise them)."""
    ctx = ssl.create_default_context(cafile=ca(world))
    conn = http.client.HTTPSConnection("127.0.0.1", world.server.port, context=ctx, timeout=30)
    conn.request(method, path)
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp


def test_new_nonce_get_is_204_without_content_length_and_every_answer_links_the_directory(world):
    resp = raw(world, "/acme/new-nonce", "GET")
    assert resp.status == 204 and resp.getheader("Content-Length") is None and resp.getheader("Replay-Nonce")
    index = f'<{world.server.directory_url}>;rel="index"'
    assert resp.getheader("Link") == index
    head = raw(world, "/acme/new-nonce", "HEAD")
    assert head.status == 200 and head.getheader("Replay-Nonce") and head.getheader("Link") == index
    for method in ("GET", "POST"):
        assert get(world, world.server.directory_url, method).json()["newOrder"].endswith("/acme/new-order")
    post = get(world, directory(world)["newNonce"], "POST", data=b"", headers=JOSE)
    assert post.status_code == 200 and post.headers["Replay-Nonce"] and post.headers["Link"] == index


def test_get_of_a_post_resource_is_405_with_allow_post(world):
    for path in ("/acme/new-account", "/acme/new-order", "/acme/order/x", "/acme/acct/x", "/acme/cert/x"):
        resp = get(world, world.server.url + path)
        assert resp.status_code == 405, path
        assert resp.headers["Allow"] == "POST"
        assert resp.headers["Content-Type"] == "application/problem+json"
        assert resp.headers["Link"] == f'<{world.server.directory_url}>;rel="index"'


def test_jose_content_type_is_enforced(world):
    key = ec.generate_private_key(ec.SECP256R1())
    url = directory(world)["newAccount"]
    body = es256_jws(key, {"alg": "ES256", "jwk": public_jwk(key), "url": url, "nonce": nonce(world)}, {})
    resp = get(world, url, "POST", data=body, headers={"Content-Type": "application/json"})
    assert resp.status_code == 415 and resp.json()["type"] == "urn:ietf:params:acme:error:malformed"
    assert "application/jose+json" in resp.json()["detail"]


def test_bad_signature_algorithm_lists_the_algorithms(world):
    key = ec.generate_private_key(ec.SECP256R1())
    url = directory(world)["newAccount"]
    body = es256_jws(key, {"alg": "HS256", "jwk": public_jwk(key), "url": url, "nonce": nonce(world)}, {})
    resp = get(world, url, "POST", data=body, headers=JOSE)
    assert resp.status_code == 400
    doc = resp.json()
    assert doc["type"] == "urn:ietf:params:acme:error:badSignatureAlgorithm"
    assert "ES256" in doc["algorithms"] and "HS256" not in doc["algorithms"]


def test_certbot_acme_account_lifecycle_and_orders_list(world, tmp_path):
    """certbot's acme ClientV2 on its own: account, POST-as-GET of it, contact update, its orders, deactivation."""
    key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    net = acme_client.ClientNetwork(key, alg=jose.ES256, verify_ssl=ca(world), user_agent="rfc8555-test")
    client = acme_client.ClientV2(acme_client.ClientV2.get_directory(world.server.directory_url, net), net)
    regr = client.new_account(messages.NewRegistration.from_data(email="ops@example.test", terms_of_service_agreed=True))
    net.account = regr
    assert regr.uri.startswith(world.server.url + "/acme/acct/")
    queried = client.query_registration(regr)
    assert queried.body.status == "valid" and queried.body.contact == ("mailto:ops@example.test",)
    updated = client.update_registration(queried, messages.Registration(contact=("mailto:sec@example.test",)))
    assert updated.body.contact == ("mailto:sec@example.test",)
    orders_url = client._post_as_get(regr.uri).json()["orders"]  # acme's Registration does not model `orders`
    assert orders_url == regr.uri + "/orders"
    assert get_orders(client, orders_url) == []
    order = messages.NewOrder(identifiers=[messages.Identifier(typ=PERMANENT_IDENTIFIER, value="urn:ek:sha256:x")])
    resp = client._post(client.directory["newOrder"], order)
    assert resp.status_code == 201
    assert get_orders(client, orders_url) == [resp.headers["Location"]]
    authz = client._authzr_from_response(client._post_as_get(resp.json()["authorizations"][0]))
    assert [c.chall.typ for c in authz.body.challenges] == ["device-attest-01"]
    client.deactivate_registration(queried)
    with pytest.raises(messages.Error, match="account is deactivated"):
        client.query_registration(queried)


def get_orders(client, url: str) -> list[str]:
    return list(client._post_as_get(url).json()["orders"])


def test_our_client_enrolls_and_the_order_shows_in_its_account(world, tmp_path):
    result = Enroller(world.tpm, EnrollOptions(world.server.directory_url, cafile=ca(world), key_out=tmp_path / "k",
                                               cert_out=tmp_path / "c")).run()
    assert result.certificate.subject == x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, result.identifier)])


def test_lego_registers_and_stops_at_the_identifier_it_cannot_attest(world, tmp_path):
    """Debian's lego (a Go ACME client): directory, nonce, account; its DNS order is refused with a clear reason."""
    require("lego")
    env = {**os.environ, "LEGO_CA_CERTIFICATES": ca(world)}
    env.pop("OPENSSL_CONF", None)
    proc = subprocess.run(["lego", "--server", world.server.directory_url, "--email", "ops@example.test",
                           "--accept-tos", "--domains", "registry.example.test", "--http", "--path", str(tmp_path),
                           "run"], capture_output=True, text=True, timeout=120, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "unsupportedIdentifier" in out and "permanent-identifier identifiers only" in out, out
    accounts = list(tmp_path.glob("accounts/*/ops@example.test/account.json"))
    assert accounts, out  # lego registered (newNonce, newAccount) and saved its account
    assert "registration" in accounts[0].read_text() and world.server.url + "/acme/acct/" in accounts[0].read_text()

