"""Registry credentials, found where the docker CLI finds them.

Explicit (--username/--password-stdin) > `credHelpers[registry]` > `credsStore` >
`auths[registry].auth` in `$DOCKER_CONFIG/config.json` (default `~/.docker/config.json`).
Helpers speak docker-credential-helpers' protocol: the server name on stdin of
`docker-credential-<name> get`, JSON `{"Username", "Secret"}` back. What is done with
them (Basic, or a token server's Bearer tokens) is auth.py's business.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .._files import read_json
from ..errors import RegistryError

TOKEN_USER = "<token>"  # docker's username for an identity token (credential-helper protocol)


@dataclass(frozen=True)
class Credentials:
    username: str
    secret: str  # never logged
    source: str  # where they came from, for error messages

    @property
    def identity_token(self) -> bool:
        """An OAuth2 refresh token (docker login's `identitytoken`), not a password."""
        return self.username == TOKEN_USER

    def basic(self) -> str:
        return "Basic " + base64.b64encode(f"{self.username}:{self.secret}".encode()).decode()

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, source={self.source!r})"


def docker_config_path() -> Path:
    base = os.environ.get("DOCKER_CONFIG")
    return (Path(base) if base else Path.home() / ".docker") / "config.json"


def _config_keys(registry: str) -> list[str]:
    return [registry, f"https://{registry}", f"http://{registry}", f"https://{registry}/v1/", f"https://{registry}/v2/"]


def find_credentials(registry: str, config: Path | None = None) -> Credentials | None:
    """Credentials for `registry` ("host[:port]") from the docker config, or None."""
    path = config or docker_config_path()
    try:
        data = read_json(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise RegistryError(f"{path}: cannot read docker config: {e}") from None
    helper = (data.get("credHelpers") or {}).get(registry) or data.get("credsStore")
    if helper:
        return helper_credentials(helper, registry)
    auths = data.get("auths") or {}
    for key in _config_keys(registry):
        entry = auths.get(key)
        if not isinstance(entry, dict):
            continue
        if entry.get("identitytoken"):
            return Credentials(TOKEN_USER, str(entry["identitytoken"]), f"{path} identitytoken")
        if entry.get("auth"):
            bad = RegistryError(f"{path}: auths[{key!r}].auth is not base64 of 'user:password'; "
                                f"run docker login {registry} again")
            try:
                user, colon, secret = base64.b64decode(entry["auth"], validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError, TypeError):
                raise bad from None
            if not colon or not user:
                raise bad
            return Credentials(user, secret, f"{path} auths")
    return None


def helper_credentials(helper: str, registry: str) -> Credentials | None:
    """Ask `docker-credential-<helper> get` (None when it has nothing for this registry)."""
    program = f"docker-credential-{helper}"
    try:
        proc = subprocess.run([program, "get"], input=registry.encode(), capture_output=True, timeout=30)
    except FileNotFoundError:
        raise RegistryError(f"credential helper {program} (from the docker config) is not installed") from None
    except subprocess.TimeoutExpired:
        raise RegistryError(f"credential helper {program} did not answer within 30 s") from None
    if proc.returncode != 0:
        message = (proc.stdout or proc.stderr).decode(errors="replace").strip()
        if "credentials not found" in message.lower():
            return None
        raise RegistryError(f"credential helper {program} failed: {message.splitlines()[0] if message else proc.returncode}")
    try:
        answer = json.loads(proc.stdout)
        return Credentials(answer["Username"], answer["Secret"], program)
    except (ValueError, KeyError, TypeError):
        raise RegistryError(f"credential helper {program} answered something that is not its JSON") from None
