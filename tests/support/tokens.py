"""A distribution token server (Bearer auth, OAuth2 refresh grant) and an mTLS registry that uses it."""

from __future__ import annotations

import base64
import datetime
import http.server
import json
import subprocess
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.x509.oid import NameOID

from support.commands import require
from support.peers import serve_https
from tpmtls.lab import Registry

USER, PASSWORD = "pusher", "correct horse battery"
REFRESH = "refresh-token-from-docker-login"  # what `docker login` stores as identitytoken


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """A distribution token server: checks Basic credentials, grants what was asked (ES256 JWT, x5c)."""

    def __init__(self, pki, directory: Path) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "token signer")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(hours=1))
                     .not_valid_after(now + datetime.timedelta(days=1)).sign(self.key, hashes.SHA256()))
        self.bundle = directory / "token-signer.crt"
        self.bundle.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.requests = 0
        self.log: list[tuple[str, str]] = []  # (method, scopes asked for)
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                server.requests += 1
                auth = self.headers.get("Authorization", "")
                expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                query = parse_qs(urlsplit(self.path).query)
                server.log.append(("GET", " ".join(query.get("scope", []))))
                if auth != expected:
                    self.send_response(401)
                    self.end_headers()
                    return
                self._grant(query.get("service", [""])[0], " ".join(query.get("scope", [])), "token")

            def do_POST(self) -> None:  # noqa: N802 - OAuth2 refresh-token grant (distribution token spec)
                server.requests += 1
                form = parse_qs(self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode())
                scope = form.get("scope", [""])[0]
                server.log.append(("POST", scope))
                if (form.get("grant_type") != ["refresh_token"] or form.get("refresh_token") != [REFRESH]
                        or not form.get("client_id") or "Authorization" in self.headers):
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self._grant(form.get("service", [""])[0], scope, "access_token")

            def _grant(self, service: str, scope: str, field: str) -> None:
                body = json.dumps({field: server.token(service, scope), "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = serve_https(Handler, pki)
        self.port = self.httpd.server_address[1]

    def token(self, service: str, scopes: str) -> str:
        access = []
        for scope in scopes.split():
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "ES256",
                  "x5c": [base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()]}
        claims = {"iss": "tpmtls-test-issuer", "sub": USER, "aud": service, "exp": now + 300, "nbf": now - 10,
                  "iat": now, "jti": str(uuid.uuid4()), "access": access}
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        r, s = utils.decode_dss_signature(self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@contextmanager
def registry_with_token_server(pki, work: Path, realm_host: str = "localhost",
                               realm: str | None = None) -> Iterator[tuple[Registry, "TokenServer"]]:
    """An mTLS docker-registry whose token realm is our TokenServer, reached as `realm_host`;
    or, given `realm`, that URL (the TokenServer then only signs: its certificate is the bundle)."""
    require("docker-registry")
    tokens = TokenServer(pki, work)
    config = {"realm": realm or f"https://{realm_host}:{tokens.port}/token", "service": "tpmtls-test",
              "issuer": "tpmtls-test-issuer", "rootcertbundle": str(tokens.bundle)}
    try:
        with Registry(pki.server_cert, pki.server_key, pki.ca_file, work / "reg", token=config) as reg:
            yield reg, tokens
    finally:
        tokens.close()


@contextmanager
def htpasswd_registry(pki, work: Path, client_ca: Path | None, user: str = USER,
                      password: str = PASSWORD) -> Iterator[Registry]:
    """A TLS docker-registry with Basic auth for `user` (an htpasswd file, bcrypt), requiring client
    certificates from `client_ca` unless it is None."""
    require("htpasswd", "docker-registry")
    htpasswd = work / "htpasswd"
    line = subprocess.run(["htpasswd", "-Bbn", user, password], capture_output=True, check=True, text=True).stdout
    htpasswd.write_text(line.strip() + "\n")
    with Registry(pki.server_cert, pki.server_key, client_ca, work / "reg", htpasswd=htpasswd) as reg:
        yield reg
