"""Authorization for one registry: Basic or Bearer, as its 401 challenge asks.

The challenge (`WWW-Authenticate: Basic realm=…` or `Bearer realm=…,service=…,scope=…`,
distribution token auth) is remembered; each scope's Authorization is fetched once, under
a lock, so parallel jobs share one token per scope, and replaced after a 401. Tokens come
from the challenge's realm: a password goes there with Basic in a GET, as the distribution
token spec has it; an identity token (`identitytoken` in config.json, or a helper's
`<token>` username) in an OAuth2 `grant_type=refresh_token` POST, as docker sends it. The
realm must be https (transport.py), and an Authorization header never goes to a host other
than the registry that asked for it (a token realm, a storage redirect). Takes the
transport and the credentials (credentials.py), nothing of the API.
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any
from urllib.parse import urlencode, urlsplit

from ..errors import RegistryError
from .credentials import Credentials
from .transport import ONCE, Transport, TransportError

CLIENT_ID = "tpmtls"
_PARAM = re.compile(r'(\w+)="([^"]*)"')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """'Bearer realm="…",service="…"' → ('bearer', {'realm': …, 'service': …})."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(_PARAM.findall(rest))


def push_scope(repo: str) -> str:
    return f"repository:{repo}:pull,push"


def pull_scope(repo: str) -> str:
    return f"repository:{repo}:pull"


class Auth:
    """The registry's Authorization per scope, learned from its challenge; thread-safe."""

    def __init__(self, transport: Transport, credentials: Credentials | None) -> None:
        self.transport = transport
        self.credentials = credentials
        self.registry = transport.registry
        self._auth: dict[str, str] = {}  # scope → Authorization header value
        self._challenge: tuple[str, dict[str, str]] | None = None  # the registry's last 401 challenge
        self._lock = threading.Lock()

    def request(self, method: str, url: str, scope: str, *, headers: dict[str, str] | None = None,
                body: bytes | None = None, ok: tuple[int, ...] = (200,), stream: bool = False) -> Any:
        """One request with the Authorization for `scope` (a new one after a 401, once) over the
        transport's bounded retries; a RegistryError line unless its status is in `ok`."""
        home = self.transport.is_home(url)
        for renewed in (False, True):
            hdrs = dict(headers or {})
            auth = self.header(scope) if home else None  # never to another host
            if auth:
                hdrs["Authorization"] = auth
            resp = self.transport.send(method, url, headers=hdrs, body=body, stream=stream)
            if resp.status == 401 and home and not renewed:
                self.challenged(resp, scope, auth)
                continue
            if resp.status not in ok:
                raise RegistryError(self.transport.refusal(method, url, resp, self.credentials))
            return resp
        raise AssertionError("unreachable")  # pragma: no cover

    def header(self, scope: str) -> str | None:
        """The Authorization value for `scope`: known, or fetched once (under a lock, so parallel
        jobs share one token per scope) when the registry has already told us how."""
        auth = self._auth.get(scope)
        if auth is not None or self._challenge is None:
            return auth
        with self._lock:
            if scope not in self._auth:
                self._auth[scope] = self._obtain(scope)
            return self._auth[scope]

    def challenged(self, resp: Any, scope: str, used: str | None) -> None:
        """A 401: remember the challenge, and get a new Authorization for `scope` unless another
        job already replaced the one this request used."""
        header = resp.headers.get("WWW-Authenticate", "")
        resp.drain_conn()
        self._challenge = parse_challenge(header)
        if self._challenge[0] not in ("basic", "bearer") or (self._challenge[0] == "bearer"
                                                            and "realm" not in self._challenge[1]):
            raise RegistryError(f"{self.registry}: unsupported authentication challenge {header!r}")
        with self._lock:
            current = self._auth.get(scope)
            if current is not None and current != used:
                return  # refreshed by another job meanwhile
            self._auth[scope] = self._obtain(scope)

    def login(self) -> bool:
        """With a Bearer challenge, have the token server check our credentials now (a token for
        no scope, like docker login); False when the challenge is Basic (nothing to ask)."""
        if self._challenge is None or self._challenge[0] != "bearer":
            return False
        self._auth[""] = self._obtain(None)
        return True

    def _obtain(self, scope: str | None) -> str:
        """Answer the registry's challenge for `scope`: Basic credentials or a bearer token."""
        assert self._challenge is not None
        scheme, params = self._challenge
        if scheme == "basic":
            if self.credentials is None:
                raise RegistryError(f"{self.registry}: needs a login (docker login, a credential helper, or --username)")
            return self.credentials.basic()
        return f"Bearer {self._token(params, scope)}"

    def _token(self, params: dict[str, str], scope: str | None) -> str:
        """A token for `scope` (None: no scope, to check the credentials) from the challenge's realm."""
        realm = params["realm"]
        creds = self.credentials
        scopes = scope.split() if scope else []
        headers = {"Host": urlsplit(realm).netloc}
        try:
            if creds is not None and creds.identity_token:
                form = {"grant_type": "refresh_token", "refresh_token": creds.secret, "client_id": CLIENT_ID}
                if params.get("service"):
                    form["service"] = params["service"]
                if scopes:
                    form["scope"] = " ".join(scopes)
                headers["Content-Type"] = "application/x-www-form-urlencoded"
                resp = self.transport.send("POST", realm, body=urlencode(form).encode(), headers=headers,
                                           retries=ONCE, what="credentials")
            else:
                query: list[tuple[str, str]] = [("service", params["service"])] if params.get("service") else []
                query += [("scope", s) for s in scopes]
                if creds is not None:
                    headers["Authorization"] = creds.basic()  # the realm asked for it: it is the token server
                sep = "&" if "?" in realm else "?"
                resp = self.transport.send("GET", realm + (sep + urlencode(query) if query else ""), headers=headers,
                                           retries=ONCE, what="credentials")
        except TransportError as e:
            reason = e.diagnosis.reason if e.diagnosis else str(e)
            raise RegistryError(f"{self.registry}: token server {realm} unreachable: {reason}") from None
        return self._token_from(realm, resp)

    def _token_from(self, realm: str, resp: Any) -> str:
        if resp.status != 200:
            creds = self.credentials
            if creds is None:
                raise RegistryError(f"{self.registry}: needs a login (docker login, a credential helper, or --username)")
            how = "with the identity token" if creds.identity_token else f"as {creds.username}"
            raise RegistryError(f"{self.registry}: authentication failed {how} ({creds.source}): "
                                f"token server {realm} answered HTTP {resp.status}")
        try:
            answer = json.loads(resp.data)
            token = answer.get("token") or answer["access_token"]
            if not isinstance(token, str) or not token:
                raise ValueError
        except (ValueError, KeyError, TypeError, AttributeError):
            raise RegistryError(f"{self.registry}: token server {realm} answered without a token") from None
        return token


__all__ = ["Auth", "parse_challenge", "pull_scope", "push_scope"]
