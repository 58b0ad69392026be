"""Bearer tokens from a registry's token server (distribution token auth, OAuth2 refresh grant).

A password (Basic) goes to the realm in a GET, as the distribution token spec has it; an
identity token (`identitytoken` in config.json, or a helper's `<token>` username) goes in an
OAuth2 `grant_type=refresh_token` POST, as docker sends it. The realm must be https, and it
never receives the registry's own Authorization.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from urllib3.exceptions import HTTPError as Urllib3Error

from ..errors import RegistryError
from ..tls.diagnosis import diagnose

if TYPE_CHECKING:
    from .client import RegistryClient

CLIENT_ID = "tpmtls"
_PARAM = re.compile(r'(\w+)="([^"]*)"')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """'Bearer realm="…",service="…"' → ('bearer', {'realm': …, 'service': …})."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(_PARAM.findall(rest))


def get_token(client: "RegistryClient", params: dict[str, str], scope: str | None) -> str:
    """A token for `scope` (None: no scope, to check the credentials) from the challenge's realm."""
    realm = params["realm"]
    pool, target = client.token_pool(realm)
    creds = client.credentials
    scopes = scope.split() if scope else []
    headers = {"Host": urlsplit(realm).netloc}
    try:
        if creds is not None and creds.identity_token:
            form: dict[str, str] = {"grant_type": "refresh_token", "refresh_token": creds.secret, "client_id": CLIENT_ID}
            if params.get("service"):
                form["service"] = params["service"]
            if scopes:
                form["scope"] = " ".join(scopes)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            resp = pool.urlopen("POST", target, body=urlencode(form).encode(), headers=headers, redirect=False,
                                assert_same_host=False)
        else:
            query: list[tuple[str, str]] = [("service", params["service"])] if params.get("service") else []
            query += [("scope", s) for s in scopes]
            if creds is not None:
                headers["Authorization"] = creds.basic()
            sep = "&" if "?" in target else "?"
            url = target + (sep + urlencode(query) if query else "")
            resp = pool.urlopen("GET", url, headers=headers, redirect=False, assert_same_host=False)
    except Urllib3Error as e:
        raise RegistryError(f"{client.registry}: token server {realm} unreachable: {diagnose(e).reason}") from None
    return _token_from(client, realm, resp)


def _token_from(client: "RegistryClient", realm: str, resp: Any) -> str:
    if resp.status != 200:
        creds = client.credentials
        if creds is None:
            raise RegistryError(f"{client.registry}: needs a login (docker login, a credential helper, or --username)")
        how = "with the identity token" if creds.identity_token else f"as {creds.username}"
        raise RegistryError(f"{client.registry}: authentication failed {how} ({creds.source}): "
                            f"token server {realm} answered HTTP {resp.status}")
    try:
        answer = json.loads(resp.data)
        token = answer.get("token") or answer["access_token"]
        if not isinstance(token, str) or not token:
            raise ValueError
    except (ValueError, KeyError, TypeError, AttributeError):
        raise RegistryError(f"{client.registry}: token server {realm} answered without a token") from None
    return token
