"""`tpmtls enroll-server`: an Attestation CA plus the ACME (RFC 8555) subset device-attest-01 needs.

Directory, nonces, accounts, orders for one `permanent-identifier`, authorizations, the
`device-attest-01` challenge (format `tpm`), finalize and certificate download; client
certificates come from the file CA. State lives in memory: this is the embedded default for
one machine and tests; fleets use step-ca (docs/enrollment.md). stdlib `ThreadingHTTPServer`
over TLS: a dozen JSON routes need no web framework, and nothing new to install or patch.
"""

from __future__ import annotations

import datetime
import hmac
import ipaddress
import json
import os
import secrets
import ssl
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import josepy as jose
from acme import jws as acme_jws
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .._files import write_atomic
from ..pki.ca import FileCA
from .acme_attobj import AttestedKey, verify_att_obj
from .attest_ca import AttestationCA
from .attest_errors import EnrollError, Refusal
from .attest_policy import PcrPolicy
from .attest_verify import load_der_csr, load_pem_bundle

NONCE_TTL = 300.0
ORDER_TTL = 3600.0
MAX_BODY = 256 * 1024
MAX_OBJECTS = 100000
CLIENT_CERT_DAYS = 30
IDENTIFIER_TYPE = "permanent-identifier"
CHALLENGE_TYPE = "device-attest-01"


def _id() -> str:
    return secrets.token_urlsafe(12)


def _rfc3339(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Account:
    id: str
    jwk: jose.JWK
    thumbprint: str


@dataclass
class _Order:
    id: str
    account: str
    identifier: str
    expires: float
    authz: str
    status: str = "pending"
    cert_id: str | None = None
    attested: AttestedKey | None = None
    pem: bytes | None = None


@dataclass
class _Authz:
    id: str
    order: str
    token: str
    status: str = "pending"
    error: dict[str, Any] | None = None


@dataclass
class Stats:
    """Counters for tests, logs and the benchmark."""

    issued: int = 0
    refused: int = 0
    seconds: float = 0.0  # time spent handling requests (server CPU + verification)
    reasons: list[str] = field(default_factory=list)


class EnrollApp:
    """The server's state and logic, apart from HTTP (so tests and fuzzers call it directly too)."""

    def __init__(self, ca_dir: str | Path, ek_roots: str | Path, policy: str | Path, *,
                 attestation_roots: str | Path | None = None, clock: Callable[[], float] = time.time,
                 nonce_ttl: float = NONCE_TTL) -> None:
        self.ca = FileCA.open(ca_dir)
        try:
            roots_pem = Path(ek_roots).read_bytes()
        except OSError as e:
            raise EnrollError(f"{ek_roots}: cannot read EK roots bundle: {e.strerror}") from None
        self.clock = clock
        self.nonce_ttl = nonce_ttl
        self.attestation_ca = AttestationCA(Path(ca_dir), load_pem_bundle(roots_pem, str(ek_roots)),
                                            PcrPolicy.load(policy), clock=clock)
        if attestation_roots is not None:
            try:
                self.ak_roots = load_pem_bundle(Path(attestation_roots).read_bytes(), str(attestation_roots))
            except OSError as e:
                raise EnrollError(f"{attestation_roots}: cannot read: {e.strerror}") from None
        else:
            self.ak_roots = [self.attestation_ca.cert]
        self.base_url = ""
        self.stats = Stats()
        self._lock = threading.Lock()
        self._nonces: dict[str, float] = {}
        self._accounts: dict[str, _Account] = {}
        self._by_thumbprint: dict[str, str] = {}
        self._orders: dict[str, _Order] = {}
        self._authz: dict[str, _Authz] = {}
        self._certs: dict[str, str] = {}  # certificate id → order id (the order holds the PEM)
        self.issued_dir = Path(ca_dir) / "issued"

    # -- nonces ---------------------------------------------------------------
    def new_nonce(self) -> str:
        now = self.clock()
        nonce = secrets.token_urlsafe(16)
        with self._lock:
            if len(self._nonces) >= MAX_OBJECTS:
                for k in [k for k, exp in self._nonces.items() if exp < now]:
                    del self._nonces[k]
            self._nonces[nonce] = now + self.nonce_ttl
        return nonce

    def _use_nonce(self, nonce: bytes | None) -> None:
        """RFC 8555 6.5: each nonce once, and only while fresh; else badNonce (the client retries)."""
        text = jose.b64encode(nonce).decode() if nonce else ""
        with self._lock:
            expires = self._nonces.pop(text, None)
        if expires is None:
            raise Refusal("badNonce", "unknown or already used nonce")
        if expires < self.clock():
            raise Refusal("badNonce", "expired nonce")

    # -- directory --------------------------------------------------------------
    def directory(self) -> dict[str, Any]:
        b = self.base_url + "/acme"
        # No revokeCert/keyChange: this subset has neither (30-day certificates, throw-away account keys).
        return {"newNonce": b + "/new-nonce", "newAccount": b + "/new-account", "newOrder": b + "/new-order",
                "meta": {"externalAccountRequired": False}}

    # -- JWS ---------------------------------------------------------------------
    def verify_jws(self, body: bytes, url: str, *, new_account: bool = False) -> tuple[bytes, jose.JWK, _Account | None]:
        """RFC 8555 6.2-6.4: flattened JWS, nonce, url, jwk xor kid, valid signature → (payload, key, account)."""
        try:
            jws = acme_jws.JWS.json_loads(body)
        except Exception:  # noqa: BLE001 - josepy DeserializationError, JSON errors, bad base64
            raise Refusal("malformed", "request is not a flattened JWS") from None
        if len(jws.signatures) != 1:
            raise Refusal("malformed", "request must carry exactly one signature")
        header: Any = jws.signature.combined  # acme.jws.Header: alg, jwk, kid, nonce, url
        if header.alg is None or header.alg.name not in ("ES256", "ES384", "RS256", "PS256", "EdDSA"):
            raise Refusal("badSignatureAlgorithm", f"unsupported JWS algorithm {getattr(header.alg, 'name', None)}")
        if header.url != url:
            raise Refusal("unauthorized", f"JWS url {header.url!r} is not this resource {url!r}")
        self._use_nonce(header.nonce)
        account = None
        if new_account:
            if header.jwk is None or header.kid:
                raise Refusal("malformed", "newAccount must be signed with a jwk, not a kid")
            key = header.jwk
        else:
            if header.kid is None or header.jwk is not None:
                raise Refusal("malformed", "request must be signed with the account's kid")
            account = self._accounts.get(header.kid.rsplit("/", 1)[-1]) if header.kid.startswith(
                self.base_url + "/acme/acct/") else None
            if account is None:
                raise Refusal("accountDoesNotExist", "unknown account")
            key = account.jwk
        try:
            ok = jws.verify(key)
        except Exception:  # noqa: BLE001 - key/algorithm mismatch
            ok = False
        if not ok:
            raise Refusal("unauthorized", "JWS signature does not verify")
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

    # -- resources -----------------------------------------------------------------
    def new_account(self, body: bytes, url: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        payload, key, _ = self.verify_jws(body, url, new_account=True)
        doc = self._json(payload)
        thumb = jose.b64encode(key.thumbprint()).decode()
        with self._lock:
            existing = self._by_thumbprint.get(thumb)
            if existing is None:
                if doc.get("onlyReturnExisting"):
                    raise Refusal("accountDoesNotExist", "no account for this key")
                if len(self._accounts) >= MAX_OBJECTS:
                    raise Refusal("rateLimited", "too many accounts", 429)
                acct = _Account(_id(), key, thumb)
                self._accounts[acct.id] = acct
                self._by_thumbprint[thumb] = acct.id
                status = 201
            else:
                acct, status = self._accounts[existing], 200
        loc = f"{self.base_url}/acme/acct/{acct.id}"
        return status, {"status": "valid", "contact": [], "orders": loc + "/orders"}, {"Location": loc}

    def new_order(self, body: bytes, url: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        payload, _, account = self.verify_jws(body, url)
        assert account is not None
        doc = self._json(payload)
        idents = doc.get("identifiers")
        if not isinstance(idents, list) or len(idents) != 1 or not isinstance(idents[0], dict):
            raise Refusal("rejectedIdentifier", "an order names exactly one permanent-identifier")
        ident = idents[0]
        if ident.get("type") != IDENTIFIER_TYPE or not isinstance(ident.get("value"), str) or not ident["value"]:
            raise Refusal("unsupportedIdentifier", f"this server issues for {IDENTIFIER_TYPE} identifiers only")
        now = self.clock()
        order = _Order(_id(), account.id, ident["value"][:512], now + ORDER_TTL, _id())
        with self._lock:
            self._expire(now)
            if len(self._orders) >= MAX_OBJECTS:
                raise Refusal("rateLimited", "too many open orders", 429)
            self._orders[order.id] = order
            self._authz[order.authz] = _Authz(order.authz, order.id, secrets.token_urlsafe(32))
        return 201, self._order_doc(order), {"Location": f"{self.base_url}/acme/order/{order.id}"}

    def _expire(self, now: float) -> None:
        for oid in [k for k, o in self._orders.items() if o.expires < now]:
            order = self._orders.pop(oid)
            self._authz.pop(order.authz, None)
            if order.cert_id:
                self._certs.pop(order.cert_id, None)

    def _order_doc(self, order: _Order) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "status": order.status, "expires": _rfc3339(order.expires),
            "identifiers": [{"type": IDENTIFIER_TYPE, "value": order.identifier}],
            "authorizations": [f"{self.base_url}/acme/authz/{order.authz}"],
            "finalize": f"{self.base_url}/acme/order/{order.id}/finalize",
        }
        if order.cert_id:
            doc["certificate"] = f"{self.base_url}/acme/cert/{order.cert_id}"
        return doc

    def _authz_doc(self, authz: _Authz, order: _Order) -> dict[str, Any]:
        chall: dict[str, Any] = {"type": CHALLENGE_TYPE, "url": f"{self.base_url}/acme/chall/{authz.id}",
                                 "token": authz.token, "status": authz.status}
        if authz.error:
            chall["error"] = authz.error
        return {"status": authz.status, "expires": _rfc3339(order.expires),
                "identifier": {"type": IDENTIFIER_TYPE, "value": order.identifier}, "challenges": [chall]}

    def _owned(self, table: dict[str, Any], key: str, account: _Account | None, what: str) -> Any:
        obj = table.get(key)
        order = obj if isinstance(obj, _Order) else self._orders.get(obj.order) if obj is not None else None
        if obj is None or order is None or account is None or order.account != account.id:
            raise Refusal("malformed", f"no such {what}", 404)
        if order.expires < self.clock():
            raise Refusal("malformed", f"this {what} expired", 404)
        return obj

    def get_order(self, oid: str, body: bytes, url: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        _, _, account = self.verify_jws(body, url)
        return 200, self._order_doc(self._owned(self._orders, oid, account, "order")), {}

    def get_authz(self, aid: str, body: bytes, url: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        _, _, account = self.verify_jws(body, url)
        authz = self._owned(self._authz, aid, account, "authorization")
        return 200, self._authz_doc(authz, self._orders[authz.order]), {}

    def challenge(self, aid: str, body: bytes, url: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        """device-attest-01 (draft-ietf-acme-device-attest 5): payload {attObj: base64url(CBOR)}."""
        payload, key, account = self.verify_jws(body, url)
        authz = self._owned(self._authz, aid, account, "challenge")
        order = self._orders[authz.order]
        up = {"Link": f'<{self.base_url}/acme/authz/{authz.id}>;rel="up"'}
        doc = self._json(payload)
        if not doc:  # POST-as-GET or an empty "ready" signal: report the state
            return 200, self._authz_doc(authz, order)["challenges"][0], up
        with self._lock:
            if authz.status != "pending":
                raise Refusal("malformed", f"this challenge was already answered ({authz.status}); "
                                            "a challenge is single-use: start a new order")
            authz.status = "processing"
        try:
            att = doc.get("attObj")
            if not isinstance(att, str) or not att:
                raise Refusal("badAttestationStatement", "payload has no attObj")
            try:
                att_obj = jose.decode_b64jose(att)
            except jose.DeserializationError:
                raise Refusal("badAttestationStatement", "failed base64 decoding attObj") from None
            key_auth = f"{authz.token}.{jose.b64encode(key.thumbprint()).decode()}"
            attested = verify_att_obj(att_obj, key_auth, self.ak_roots)
            # step-ca deviceAttest01Validate: the challenged identifier must be one the AK certificate attests.
            if attested.identifiers and order.identifier not in attested.identifiers:
                raise Refusal("badAttestationStatement",
                              f"permanent identifier does not match: challenge identifier {order.identifier!r} "
                              f"is not among the attested hardware identifiers {attested.identifiers}")
        except Exception as e:  # noqa: BLE001 - a refusal, or a bug: either way this single-use challenge is spent
            problem = e if isinstance(e, Refusal) else Refusal("serverInternal", f"{type(e).__name__}: {e}", 500)
            with self._lock:
                authz.status, authz.error = "invalid", problem.problem()
                order.status = "invalid"
            raise problem from None
        with self._lock:
            authz.status, order.status, order.attested = "valid", "ready", attested
        return 200, self._authz_doc(authz, order)["challenges"][0], up

    def finalize(self, oid: str, body: bytes, url: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        """step-ca Order.Finalize: order ready, CSR key == attested key, CN empty or the identifier."""
        payload, _, account = self.verify_jws(body, url)
        order = self._owned(self._orders, oid, account, "order")
        loc = {"Location": f"{self.base_url}/acme/order/{order.id}"}
        with self._lock:
            if order.status != "ready":
                raise Refusal("orderNotReady", f"order is {order.status}, not ready", 403)
            order.status = "processing"
        try:
            csr_b64 = self._json(payload).get("csr")
            try:
                der = jose.decode_b64jose(csr_b64) if isinstance(csr_b64, str) else b""
            except jose.DeserializationError:
                raise Refusal("badCSR", "csr is not base64url") from None
            csr = load_der_csr(der)
            spki = csr.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
            assert order.attested is not None
            if not hmac.compare_digest(spki, order.attested.spki):
                raise Refusal("unauthorized", f"order {order.id} csr does not match the attested key")
            cns = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
            if cns and cns != [order.identifier]:
                raise Refusal("badCSR", f"CSR Subject Common Name {cns[0]!r} does not match the order's "
                                        f"permanent identifier {order.identifier!r}")
            cert = self.ca.issue(csr, days=CLIENT_CERT_DAYS)
        except Exception:  # a refusal or a bug: the order is spent either way (never left "processing")
            with self._lock:
                order.status = "invalid"
            raise
        pem = cert.public_bytes(serialization.Encoding.PEM) + self.ca.cert.public_bytes(serialization.Encoding.PEM)
        cert_id = _id()
        self._record(cert)
        with self._lock:
            self._certs[cert_id] = order.id
            order.cert_id, order.pem, order.status = cert_id, pem, "valid"
            self.stats.issued += 1
        return 200, self._order_doc(order), loc

    def _record(self, cert: x509.Certificate) -> None:
        """Keep each issued certificate in DIR/issued/<serial>.pem: the audit trail of what was given out."""
        self.issued_dir.mkdir(exist_ok=True)
        write_atomic(self.issued_dir / f"{cert.serial_number:x}.pem", cert.public_bytes(serialization.Encoding.PEM), 0o644)

    def certificate(self, cid: str, body: bytes, url: str) -> bytes:
        _, _, account = self.verify_jws(body, url)
        order = self._orders.get(self._certs.get(cid, ""))
        if order is None or order.pem is None or account is None or order.account != account.id:
            raise Refusal("malformed", "no such certificate", 404)
        return order.pem


class _Handler(BaseHTTPRequestHandler):
    """Routes HTTP to EnrollApp; every error is a problem document with a fresh Replay-Nonce."""

    server: "_Server"
    protocol_version = "HTTP/1.1"
    timeout = 30  # a stalled client cannot hold a thread forever
    disable_nagle_algorithm = True  # headers and body are two writes: without this, 40 ms (delayed ACK) each

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        pass  # refusals are logged one line each in _refused

    def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Replay-Nonce", self.server.app.new_nonce())
        self.send_header("Cache-Control", "no-store")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        app = self.server.app
        if self.path == "/acme/directory":
            self._send(200, json.dumps(app.directory()).encode(), "application/json")
        elif self.path == "/acme/new-nonce":
            self._send(200 if self.command == "HEAD" else 204, b"", "text/plain")
        elif self.path == "/attestation-ca.crt":
            self._send(200, app.attestation_ca.root_pem, "application/x-pem-file")
        else:
            self._problem(Refusal("malformed", f"no resource {self.path[:100]!r} (use POST for ACME resources)", 404))

    def do_POST(self) -> None:  # noqa: N802
        app = self.server.app
        start = time.perf_counter()
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 <= length <= MAX_BODY:
                raise Refusal("malformed", f"request body larger than {MAX_BODY} bytes", 413)
            body = self.rfile.read(length)
            url = app.base_url + self.path
            parts = self.path.strip("/").split("/")
            if self.path in ("/attest", "/secret"):
                try:
                    doc = json.loads(body)
                except ValueError:
                    raise Refusal("malformed", "body is not JSON") from None
                out = app.attestation_ca.attest(doc) if self.path == "/attest" else app.attestation_ca.secret(doc)
                self._send(200, json.dumps(out).encode(), "application/json")
                return
            if parts[:1] != ["acme"]:
                raise Refusal("malformed", f"no resource {self.path[:100]!r}", 404)
            route = parts[1:]
            if route == ["new-account"]:
                status, doc, headers = app.new_account(body, url)
            elif route == ["new-order"]:
                status, doc, headers = app.new_order(body, url)
            elif len(route) == 2 and route[0] == "order":
                status, doc, headers = app.get_order(route[1], body, url)
            elif len(route) == 3 and route[0] == "order" and route[2] == "finalize":
                status, doc, headers = app.finalize(route[1], body, url)
            elif len(route) == 2 and route[0] == "authz":
                status, doc, headers = app.get_authz(route[1], body, url)
            elif len(route) == 2 and route[0] == "chall":
                status, doc, headers = app.challenge(route[1], body, url)
            elif len(route) == 2 and route[0] == "cert":
                pem = app.certificate(route[1], body, url)
                self._send(200, pem, "application/pem-certificate-chain")
                return
            else:
                raise Refusal("malformed", f"no resource {self.path[:100]!r}", 404)
            self._send(status, json.dumps(doc).encode(), "application/json", headers)
        except Refusal as e:
            self._problem(e)
        except Exception as e:  # noqa: BLE001 - a bug must not kill the server thread silently
            self._problem(Refusal("serverInternal", f"{type(e).__name__}: {e}", 500))
        finally:
            with app._lock:
                app.stats.seconds += time.perf_counter() - start

    def _problem(self, e: Refusal) -> None:
        app = self.server.app
        if e.kind != "badNonce":
            with app._lock:
                app.stats.refused += 1
                if len(app.stats.reasons) < 1000:
                    app.stats.reasons.append(str(e))
            print(f"tpmtls enroll-server: refused {self.command} {self.path[:100]}: {e}", file=sys.stderr, flush=True)
        self._send(e.status, json.dumps(e.problem()).encode(), "application/problem+json")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    app: EnrollApp

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that fails TLS or hangs up mid-request costs one line, not a traceback."""
        e = sys.exc_info()[1]
        print(f"tpmtls enroll-server: connection from {client_address[0]}: {type(e).__name__}: {e}",
              file=sys.stderr, flush=True)


def server_context(ca: FileCA, host: str) -> ssl.SSLContext:
    """TLS for the listen address: a fresh key and a server certificate the file CA issues for it."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tpmtls enroll-server")])).sign(key, hashes.SHA256())
    try:
        ipaddress.ip_address(host)
        san = f"IP:{host}"
    except ValueError:
        san = f"DNS:{host}"
    cert = ca.issue(csr, server=True, sans=[san], days=30)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory(prefix="tpmtls-enroll-") as d:
        kp, cp = Path(d) / "k.pem", Path(d) / "c.pem"
        fd = os.open(kp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + ca.cert.public_bytes(serialization.Encoding.PEM))
        ctx.load_cert_chain(cp, kp)
    return ctx


class EnrollServer:
    """The HTTPS server around an EnrollApp, on a thread (tests, benchmark) or in the foreground (CLI)."""

    def __init__(self, app: EnrollApp, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self.host = host
        try:
            self._httpd = _Server((host, port), _Handler)
        except OSError as e:
            raise EnrollError(f"cannot listen on {host}:{port}: {e.strerror}") from None
        self._httpd.app = app
        self._httpd.socket = server_context(app.ca, host).wrap_socket(
            self._httpd.socket, server_side=True, do_handshake_on_connect=False)
        self.port = self._httpd.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        app.base_url = f"https://{shown}:{self.port}"
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return self.app.base_url

    @property
    def directory_url(self) -> str:
        return self.app.base_url + "/acme/directory"

    def start(self) -> "EnrollServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="tpmtls-enroll-server", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever(poll_interval=0.5)

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(10)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> "EnrollServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["EnrollApp", "EnrollServer", "Stats", "server_context"]
