"""`docker-credential-tpmtls {store,get,erase,list,version}`: Docker's credential-helper
protocol over the TPM-sealed store (tpmtls.docker.credentials).

The protocol is docker/docker-credential-helpers' `credentials.Serve` (credentials/
credentials.go, error.go), ported: one action argument; `store` reads
{"ServerURL","Username","Secret"} on stdin (JSON field names matched case-insensitively,
as Go's encoding/json does); `get` reads the server URL and writes that JSON; `erase`
reads the server URL; `list` writes {url: username}; `version` prints
"docker-credential-tpmtls (tpmtls) <version>". Every error is one line on *stdout* with
exit 1 — that is where the docker CLI reads it — with the library's exact texts for
"credentials not found in native keychain", "no credentials server URL" and
"no credentials username". Nothing goes to stderr, and no secret anywhere but `get`'s answer.
"""

from __future__ import annotations

import json
import os
import sys
from typing import TextIO

NAME = "docker-credential-tpmtls"
ACTIONS = ("store", "get", "erase", "list", "version")


def _usage() -> str:
    return f"Usage: {NAME} <{'|'.join(ACTIONS)}>"


def _version() -> str:
    from .._version import __version__

    return f"{NAME} (tpmtls) {__version__}"


def _field(doc: dict[str, object], name: str) -> str:
    """A string field, matched like Go's encoding/json (exact name first, then case-insensitive)."""
    from ..docker.credentials import CredentialsError

    value = doc.get(name)
    if value is None:
        value = next((v for k, v in doc.items() if k.lower() == name.lower()), None)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise CredentialsError(f"store: {name} must be a JSON string")
    return value


def handle(action: str, stdin: TextIO, stdout: TextIO) -> None:
    """Run one protocol action (credentials.HandleCommand); errors are raised as TpmtlsError."""
    from ..docker.credentials import NO_SERVER_URL, CredentialsError, CredentialStore, Entry

    if action == "version":
        stdout.write(_version() + "\n")
        return
    if action not in ACTIONS:
        raise CredentialsError(f"{NAME}: unknown action: {action}")
    store = CredentialStore()
    if action == "list":
        stdout.write(json.dumps(store.list()) + "\n")
        return
    text = stdin.read()
    if action == "store":
        try:
            doc = json.loads("".join(text.splitlines()))
        except ValueError as e:
            raise CredentialsError(f"store: stdin is not JSON {{\"ServerURL\",\"Username\",\"Secret\"}} ({e})") from None
        if not isinstance(doc, dict):
            raise CredentialsError("store: stdin is not a JSON object {\"ServerURL\",\"Username\",\"Secret\"}")
        store.store(Entry(_field(doc, "ServerURL"), _field(doc, "Username"), _field(doc, "Secret")))
        return
    server_url = "".join(text.splitlines()).strip()
    if not server_url:
        raise CredentialsError(NO_SERVER_URL)
    if action == "get":
        entry = store.get(server_url)
        stdout.write(json.dumps({"ServerURL": server_url, "Username": entry.username, "Secret": entry.secret}) + "\n")
    else:
        store.erase(server_url)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status (0, or 1 on any error)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(_usage(), flush=True)
        return 1
    if args[0] in ("--version", "-v"):
        print(_version(), flush=True)
        return 0
    if args[0] in ("--help", "-h"):
        print(_usage(), flush=True)
        return 0
    from ..errors import TpmtlsError

    try:
        handle(args[0], sys.stdin, sys.stdout)
        sys.stdout.flush()
        return 0
    except TpmtlsError as e:
        print(str(e).splitlines()[0] if str(e) else type(e).__name__, flush=True)
        return 1
    except KeyboardInterrupt:
        print(f"{NAME}: interrupted", flush=True)
        return 130
    except Exception as e:  # noqa: BLE001 - a bug: still one line where docker reads it
        if os.environ.get("TPMTLS_DEBUG"):
            raise
        print(f"{NAME}: internal error: {type(e).__name__}: {e} (set TPMTLS_DEBUG=1 for a traceback)", flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
