"""`tpmtls enroll-server`: an Attestation CA plus the ACME (RFC 8555) subset device-attest-01 needs.

Directory, nonces, accounts (with their orders list and deactivation), orders for one
`permanent-identifier`, authorizations, the `device-attest-01` challenge (format `tpm`, with
a PCR quote over the same challenge), finalize and certificate download; client certificates
come from the file CA with every field from the server's settings, none from the CSR. State
lives in an `EnrollStore` (SQLite by default, PostgreSQL for several instances), so a restart
loses nothing and two processes can share one database. `EnrollApp.handle` takes a parsed
request and returns a response: HTTP, TLS, connection bounds and deadlines are `serve`'s.
docs/enrollment-server.md describes the whole.
"""

from __future__ import annotations

import datetime
import hmac
import json
import logging
import secrets
import threading
import time
from pathlib import Path
from typing import Any, Callable

import josepy as jose
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from .._files import read_input
from ..pki.ca import FileCA
from .acme_attobj import verify_att_obj
from .acme_jws import ALGORITHMS, JOSE, parse_jws, signature_verifies
from .acme_settings import NONCE_TTL, Settings, Stats
from .attest_ca import AttestationCA
from .attest_errors import EnrollError, Refusal
from .attest_policy import PcrPolicy
from .attest_verify import load_der_csr, load_pem_bundle
from .ek_hygiene import EkCrls, EkDenyList, check_not_roca
from .ratelimit import Buckets
from .revocations import CaRevocations
from .serve import EnrollServer, Request, Response
from .state import Account, CertRecord, EnrollStore, Order
from .state_sql import open_store

IDENTIFIER_TYPE = "permanent-identifier"
CHALLENGE_TYPE = "device-attest-01"
MAX_ORDERS_LISTED = 100

_log = logging.getLogger("tpmtls.enroll_server")


def _id() -> str:
    return secrets.token_urlsafe(12)


def _rfc3339(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class EnrollApp:
    """The server's logic apart from HTTP (so tests and fuzzers call it directly too)."""

    def __init__(self, ca_dir: str | Path, ek_roots: str | Path, policy: str | Path, *,
                 attestation_roots: str | Path | None = None, clock: Callable[[], float] = time.time,
                 db: str | None = None, store: EnrollStore | None = None, settings: Settings | None = None,
                 ek_deny: str | Path | None = None, ek_crls: str | Path | None = None,
                 nonce_ttl: float | None = None) -> None:
        self.ca = FileCA.open(ca_dir)
        self.settings = settings or Settings()
        if nonce_ttl is not None:
            self.settings.nonce_ttl = nonce_ttl
        roots_pem = read_input(ek_roots, "EK roots bundle", error=EnrollError)
        self.clock = clock
        self.policy = PcrPolicy.load(policy)
        self.ek_deny = EkDenyList.load(ek_deny) if ek_deny else None
        self.ek_crls = EkCrls.load(ek_crls) if ek_crls else None
        self.store = store or open_store(db, ca_dir)
        self.attestation_ca = AttestationCA(Path(ca_dir), load_pem_bundle(roots_pem, str(ek_roots)), self.policy,
                                            self.store, clock=clock, ek_deny=self.ek_deny, ek_crls=self.ek_crls)
        if attestation_roots is not None:
            self.ak_roots = load_pem_bundle(read_input(attestation_roots, "attestation roots bundle", error=EnrollError),
                                            str(attestation_roots))
        else:
            self.ak_roots = [self.attestation_ca.cert]
        self.base_url = ""
        self.stats = Stats()
        self._lock = threading.Lock()
        self._new_accounts = Buckets(self.settings.new_accounts, "new accounts")
        self._attestations = Buckets(self.settings.attestations, "attestations")
        self.revocations = CaRevocations(ca_dir, self.store)

    @property
    def nonce_ttl(self) -> float:
        return self.settings.nonce_ttl

    def close(self) -> None:
        self.store.close()

    # -- nonces ---------------------------------------------------------------------------
    def new_nonce(self) -> str:
        nonce = secrets.token_urlsafe(16)
        self.store.add_nonce(nonce, self.clock() + self.settings.nonce_ttl, self.settings.nonce_cap)
        return nonce

    def _use_nonce(self, nonce: bytes | None) -> None:
        """RFC 8555 6.5: each nonce once, and only while fresh; else badNonce (the client retries)."""
        expires = self.store.take_nonce(jose.b64encode(nonce).decode()) if nonce else None
        if expires is None:
            raise Refusal("badNonce", "unknown or already used nonce")
        if expires < self.clock():
            raise Refusal("badNonce", "expired nonce")

    # -- URLs -----------------------------------------------------------------------------
    @property
    def acme(self) -> str:
        return self.base_url + "/acme"

    def directory(self) -> dict[str, Any]:
        b = self.acme
        # No revokeCert/keyChange: revocation is the CA owner's (`tpmtls ca revoke`), account keys are throw-away.
        return {"newNonce": b + "/new-nonce", "newAccount": b + "/new-account", "newOrder": b + "/new-order",
                "meta": {"externalAccountRequired": False}}

    # -- JWS ------------------------------------------------------------------------------
    def verify_jws(self, body: bytes, url: str, *, new_account: bool = False) -> tuple[bytes, jose.JWK, Account | None]:
        """RFC 8555 6.2-6.4: flattened JWS whose *protected* header holds alg, nonce, url and jwk xor kid."""
        jws, header = parse_jws(body, url)
        self._use_nonce(header.nonce)
        account = None
        if new_account:
            if header.jwk is None or header.kid:
                raise Refusal("malformed", "newAccount must be signed with a jwk, not a kid")
            key = header.jwk
        else:
            if header.kid is None or header.jwk is not None:
                raise Refusal("malformed", "request must be signed with the account's kid")
            prefix = self.acme + "/acct/"
            account = self.store.account(header.kid[len(prefix):]) if header.kid.startswith(prefix) else None
            if account is None:
                raise Refusal("accountDoesNotExist", "unknown account")
            key = jose.JWK.from_json(json.loads(account.jwk))
        if not signature_verifies(jws, key):
            raise Refusal("unauthorized", "JWS signature does not verify")
        if account is not None:
            if account.status != "valid":
                raise Refusal("unauthorized", f"account is {account.status}", 401)
            now = self.clock()
            if now - account.last_used > 3600:  # a write at most hourly per account: idle accounts expire
                self.store.update_account(account.id, last_used=now)
        return jws.payload, key, account

    @staticmethod
    def _json(payload: bytes) -> dict[str, Any]:
        try:
            doc = json.loads(payload) if payload else {}
        except ValueError:
            raise Refusal("malformed", "payload is not JSON") from None
        if not isinstance(doc, dict):
            raise Refusal("malformed", "payload is not a JSON object")
        return doc

    # -- accounts -------------------------------------------------------------------------
    def _account_doc(self, account: Account) -> dict[str, Any]:
        return {"status": account.status, "contact": account.contact,
                "orders": f"{self.acme}/acct/{account.id}/orders"}

    def new_account(self, req: Request) -> Response:
        payload, key, _ = self.verify_jws(req.body, self.base_url + req.path, new_account=True)
        doc = self._json(payload)
        thumb = jose.b64encode(key.thumbprint()).decode()
        existing = self.store.account_by_thumbprint(thumb)
        if existing is None:
            if doc.get("onlyReturnExisting"):
                raise Refusal("accountDoesNotExist", "no account for this key")
            self._new_accounts.take(req.client)
            now = self.clock()
            account, created = self.store.add_account(Account(_id(), thumb, json.dumps(key.to_partial_json()),
                                                              contact=_contact(doc.get("contact")), created=now,
                                                              last_used=now, client=req.client))
        else:
            account, created = existing, False
        if account.status != "valid":
            raise Refusal("unauthorized", f"account is {account.status}", 401)
        loc = f"{self.acme}/acct/{account.id}"
        return self._doc(201 if created else 200, self._account_doc(account), {"Location": loc})

    def account_resource(self, req: Request, account_id: str, orders: bool) -> Response:
        """POST-as-GET the account (or its orders list); POST {status: deactivated} or {contact} to change it."""
        payload, _, account = self.verify_jws(req.body, self.base_url + req.path)
        assert account is not None
        if account.id != account_id:
            raise Refusal("unauthorized", "this is not your account", 403)
        if orders:
            ids = self.store.orders_of(account.id, MAX_ORDERS_LISTED)
            return self._doc(200, {"orders": [f"{self.acme}/order/{i}" for i in ids]})
        doc = self._json(payload)
        if doc.get("status") == "deactivated":
            self.store.update_account(account.id, status="deactivated")
            account.status = "deactivated"
        elif "status" in doc:
            raise Refusal("malformed", "an account's status can only be changed to deactivated")
        if "contact" in doc:
            account.contact = _contact(doc["contact"])
            self.store.update_account(account.id, contact=account.contact)
        return self._doc(200, self._account_doc(account))

    # -- orders ---------------------------------------------------------------------------
    def new_order(self, req: Request) -> Response:
        payload, _, account = self.verify_jws(req.body, self.base_url + req.path)
        assert account is not None
        doc = self._json(payload)
        idents = doc.get("identifiers")
        if not isinstance(idents, list) or len(idents) != 1 or not isinstance(idents[0], dict):
            raise Refusal("rejectedIdentifier", "an order names exactly one permanent-identifier")
        ident = idents[0]
        if ident.get("type") != IDENTIFIER_TYPE or not isinstance(ident.get("value"), str) or not ident["value"]:
            raise Refusal("unsupportedIdentifier", f"this server issues for {IDENTIFIER_TYPE} identifiers only")
        now = self.clock()
        if self.store.open_orders(account.id, now) >= self.settings.open_orders_per_account:
            raise Refusal("rateLimited", f"this account has {self.settings.open_orders_per_account} open orders; "
                                         "finish or let one expire first", 429, headers={"Retry-After": "60"})
        order = Order(_id(), account.id, ident["value"][:512], now + self.settings.order_ttl, _id(),
                      secrets.token_urlsafe(32), created=now)
        self.store.add_order(order)
        return self._doc(201, self._order_doc(order), {"Location": f"{self.acme}/order/{order.id}"})

    def _order_doc(self, order: Order) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "status": order.status, "expires": _rfc3339(order.expires),
            "identifiers": [{"type": IDENTIFIER_TYPE, "value": order.identifier}],
            "authorizations": [f"{self.acme}/authz/{order.authz_id}"],
            "finalize": f"{self.acme}/order/{order.id}/finalize",
        }
        if order.cert_serial:
            doc["certificate"] = f"{self.acme}/cert/{order.cert_serial}"
        if order.status == "invalid" and order.error:
            doc["error"] = order.error
        return doc

    def _challenge_doc(self, order: Order) -> dict[str, Any]:
        chall: dict[str, Any] = {"type": CHALLENGE_TYPE, "url": f"{self.acme}/chall/{order.authz_id}",
                                 "token": order.token, "status": order.authz_status}
        if order.error and order.authz_status == "invalid":
            chall["error"] = order.error
        return chall

    def _authz_doc(self, order: Order) -> dict[str, Any]:
        return {"status": order.authz_status, "expires": _rfc3339(order.expires),
                "identifier": {"type": IDENTIFIER_TYPE, "value": order.identifier},
                "challenges": [self._challenge_doc(order)]}

    def _owned(self, order: Order | None, account: Account | None, what: str) -> Order:
        if order is None or account is None or order.account != account.id:
            raise Refusal("malformed", f"no such {what}", 404)
        if order.expires < self.clock():
            raise Refusal("malformed", f"this {what} expired", 404)
        return order

    def get_order(self, req: Request, oid: str) -> Response:
        _, _, account = self.verify_jws(req.body, self.base_url + req.path)
        return self._doc(200, self._order_doc(self._owned(self.store.order(oid), account, "order")))

    def get_authz(self, req: Request, aid: str) -> Response:
        _, _, account = self.verify_jws(req.body, self.base_url + req.path)
        return self._doc(200, self._authz_doc(self._owned(self.store.order_by_authz(aid), account, "authorization")))

    def challenge(self, req: Request, aid: str) -> Response:
        """device-attest-01 (draft-ietf-acme-device-attest 5): payload {attObj: base64url(CBOR)}."""
        payload, key, account = self.verify_jws(req.body, self.base_url + req.path)
        order = self._owned(self.store.order_by_authz(aid), account, "challenge")
        up = {"Link": f'<{self.acme}/authz/{order.authz_id}>;rel="up"'}
        doc = self._json(payload)
        if not doc:  # POST-as-GET or an empty "ready" signal: report the state
            return self._doc(200, self._challenge_doc(order), up)
        if not self.store.update_order(order.id, {"authz_status": "pending"}, authz_status="processing"):
            current = self.store.order(order.id)
            raise Refusal("malformed", f"this challenge was already answered ({current.authz_status if current else 'gone'}); "
                                       "a challenge is single-use: start a new order")
        try:
            att = doc.get("attObj")
            if not isinstance(att, str) or not att:
                raise Refusal("badAttestationStatement", "payload has no attObj")
            try:
                att_obj = jose.decode_b64jose(att)
            except jose.DeserializationError:
                raise Refusal("badAttestationStatement", "failed base64 decoding attObj") from None
            key_auth = f"{order.token}.{jose.b64encode(key.thumbprint()).decode()}"
            attested = verify_att_obj(att_obj, key_auth, self.ak_roots, self.policy)
            # step-ca deviceAttest01Validate: the challenged identifier must be one the AK certificate attests.
            if attested.identifiers and order.identifier not in attested.identifiers:
                raise Refusal("badAttestationStatement",
                              f"permanent identifier does not match: challenge identifier {order.identifier!r} "
                              f"is not among the attested hardware identifiers {attested.identifiers}")
            if self.ek_deny is not None:
                self.ek_deny.check(attested.identifiers, "the EK")
            check_not_roca(attested.public_key, "the attested key")
            self.revocations.check_key(attested.spki)  # a renewal of a revoked certificate's key ends here
        except Exception as e:  # noqa: BLE001 - a refusal, or a bug: either way this single-use challenge is spent
            problem = e if isinstance(e, Refusal) else Refusal("serverInternal", f"{type(e).__name__}: {e}", 500)
            self.store.update_order(order.id, {}, authz_status="invalid", status="invalid", error=problem.problem())
            raise problem from None
        order.authz_status, order.status = "valid", "ready"
        self.store.update_order(order.id, {"authz_status": "processing"}, authz_status="valid", status="ready",
                                attested_spki=attested.spki, ek=" ".join(attested.identifiers))
        return self._doc(200, self._challenge_doc(order), up)

    def finalize(self, req: Request, oid: str) -> Response:
        """step-ca Order.Finalize: order ready, CSR key == attested key, CN empty or the identifier.

        The certificate itself is the server's: subject CN=identifier, clientAuth, `cert_hours` long.
        """
        payload, _, account = self.verify_jws(req.body, self.base_url + req.path)
        order = self._owned(self.store.order(oid), account, "order")
        assert account is not None
        loc = {"Location": f"{self.acme}/order/{order.id}"}
        if not self.store.update_order(order.id, {"status": "ready"}, status="processing"):
            raise Refusal("orderNotReady", f"order is {order.status}, not ready", 403)
        try:
            csr_b64 = self._json(payload).get("csr")
            try:
                der = jose.decode_b64jose(csr_b64) if isinstance(csr_b64, str) else b""
            except jose.DeserializationError:
                raise Refusal("badCSR", "csr is not base64url") from None
            csr = load_der_csr(der)
            spki = csr.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
            if order.attested_spki is None or not hmac.compare_digest(spki, order.attested_spki):
                raise Refusal("unauthorized", f"order {order.id} csr does not match the attested key")
            cns = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
            if cns and cns != [order.identifier]:
                raise Refusal("badCSR", f"CSR Subject Common Name {cns[0]!r} does not match the order's "
                                        f"permanent identifier {order.identifier!r}")
            key_hash = self.revocations.check_key(spki)  # revoked since the challenge: still refused
            cert = self.ca.issue_for(csr.public_key(), x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, order.identifier)]),
                                     lifetime=datetime.timedelta(hours=self.settings.cert_hours))
        except Exception:  # a refusal or a bug: the order is spent either way (never left "processing")
            self.store.update_order(order.id, {}, status="invalid")
            raise
        pem = cert.public_bytes(serialization.Encoding.PEM) + self.ca.cert.public_bytes(serialization.Encoding.PEM)
        serial = f"{cert.serial_number:x}"
        self.ca.record(cert)  # DIR/issued/<serial>.pem: the audit trail, and what `ca revoke --serial` finds
        self.store.add_certificate(CertRecord(serial, order.id, account.id, order.identifier, order.ek, key_hash,
                                              cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp(),
                                              pem, self.clock()))
        self.store.update_order(order.id, {}, status="valid", cert_serial=serial)
        order.status, order.cert_serial = "valid", serial
        with self._lock:
            self.stats.issued += 1
        return self._doc(200, self._order_doc(order), loc)

    def certificate(self, req: Request, serial: str) -> Response:
        _, _, account = self.verify_jws(req.body, self.base_url + req.path)
        record = self.store.certificate(serial)
        if record is None or account is None or record.account != account.id:
            raise Refusal("malformed", "no such certificate", 404)
        return Response(200, record.pem, "application/pem-certificate-chain")

    # -- housekeeping ---------------------------------------------------------------------
    def housekeeping(self) -> dict[str, int]:
        """Forget what is spent or idle (run every minute by the server)."""
        s = self.settings
        self.revocations.sync()
        return self.store.purge(self.clock(), s.account_idle, s.keep_orders)

    # -- HTTP -----------------------------------------------------------------------------
    @staticmethod
    def _doc(status: int, doc: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
        return Response(status, json.dumps(doc).encode(), "application/json", headers or {})

    _POST_ONLY = ("new-account", "new-order", "acct", "order", "authz", "chall", "cert")

    def handle(self, req: Request) -> Response:
        """One request → one response; every ACME answer carries a fresh Replay-Nonce and Link rel=index."""
        start = time.perf_counter()
        try:
            resp = self._route(req)
        except Refusal as e:
            resp = self._problem(req, e)
        except Exception as e:  # noqa: BLE001 - a bug must not kill the worker: a 500 problem, one log line
            resp = self._problem(req, Refusal("serverInternal", f"{type(e).__name__}: {e}", 500))
        if req.path.startswith("/acme/"):
            resp.headers.setdefault("Link", f'<{self.acme}/directory>;rel="index"')
            try:
                resp.headers["Replay-Nonce"] = self.new_nonce()
            except EnrollError:
                pass  # the database is down: the problem says so; no nonce to give
        resp.headers["Cache-Control"] = "no-store"
        with self._lock:
            self.stats.requests += 1
            self.stats.seconds += time.perf_counter() - start
        return resp

    def _route(self, req: Request) -> Response:
        path, method = req.path, req.method
        if path in ("/attest", "/secret"):
            if method != "POST":
                raise Refusal("malformed", f"{path} takes POST", 405, headers={"Allow": "POST"})
            try:
                doc = json.loads(req.body)
            except ValueError:
                raise Refusal("malformed", "body is not JSON") from None
            if path == "/attest":
                self._attestations.take(req.client)
                out = self.attestation_ca.attest(doc)
            else:
                out = self.attestation_ca.secret(doc)
            return self._doc(200, out)
        if path == "/attestation-ca.crt" and method in ("GET", "HEAD"):
            return Response(200, self.attestation_ca.root_pem, "application/x-pem-file")
        if path == "/acme/directory":  # GET, or POST-as-GET (some clients sign every request)
            return self._doc(200, self.directory())
        if path == "/acme/new-nonce":  # RFC 8555 7.2: HEAD 200, GET 204 (no body, no Content-Length); POST too
            return Response(204 if method == "GET" else 200, b"", "")
        parts = path.strip("/").split("/")
        if parts[:1] != ["acme"] or len(parts) < 2 or parts[1] not in self._POST_ONLY:
            raise Refusal("malformed", f"no resource {path[:100]!r}", 404)
        if method != "POST":  # RFC 8555 6.3: these are fetched with POST-as-GET
            raise Refusal("malformed", f"{path[:100]} takes POST (POST-as-GET to read it)", 405, headers={"Allow": "POST"})
        ctype = req.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != JOSE:  # RFC 8555 6.2
            raise Refusal("malformed", f"Content-Type must be {JOSE}, not {ctype or 'missing'!r}", 415)
        route = parts[1:]
        if route == ["new-account"]:
            return self.new_account(req)
        if route == ["new-order"]:
            return self.new_order(req)
        if len(route) == 2 and route[0] == "acct":
            return self.account_resource(req, route[1], orders=False)
        if len(route) == 3 and route[0] == "acct" and route[2] == "orders":
            return self.account_resource(req, route[1], orders=True)
        if len(route) == 2 and route[0] == "order":
            return self.get_order(req, route[1])
        if len(route) == 3 and route[0] == "order" and route[2] == "finalize":
            return self.finalize(req, route[1])
        if len(route) == 2 and route[0] == "authz":
            return self.get_authz(req, route[1])
        if len(route) == 2 and route[0] == "chall":
            return self.challenge(req, route[1])
        if len(route) == 2 and route[0] == "cert":
            return self.certificate(req, route[1])
        raise Refusal("malformed", f"no resource {path[:100]!r}", 404)

    def _problem(self, req: Request, e: Refusal) -> Response:
        if e.kind not in ("badNonce", "rateLimited"):
            with self._lock:
                self.stats.refused += 1
                if len(self.stats.reasons) < 1000:
                    self.stats.reasons.append(str(e))
            _log.warning(f"refused {req.method} {req.path[:100]}: {e}")
        return Response(e.status, json.dumps(e.problem()).encode(), "application/problem+json", dict(e.headers))


def _contact(value: object) -> list[str]:
    """RFC 8555 7.3 contact URLs, kept as given (at most 4, each at most 256 characters)."""
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > 4 or not all(isinstance(c, str) and len(c) <= 256 for c in value):
        raise Refusal("invalidContact", "contact is a list of at most 4 URLs")
    return list(value)


__all__ = ["ALGORITHMS", "JOSE", "NONCE_TTL", "EnrollApp", "EnrollServer", "Settings", "Stats"]
