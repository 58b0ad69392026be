"""Helpers for the enroll-server tests: the server as its own process, raw JWS requests, odd clients."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import josepy as jose
import requests
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from requests.adapters import HTTPAdapter


class ServerProcess:
    """`tpmtls enroll-server …` as a user runs it; its URL read from its first stdout line; stopped by PID."""

    def __init__(self, env: dict[str, str], cwd: Path, *args: str, listen: str = "127.0.0.1:0",
                 prefix: tuple[str, ...] = (), log_name: str = "enroll-server.log") -> None:
        self.log = cwd / log_name
        self.proc = subprocess.Popen([*prefix, sys.executable, "-m", "tpmtls", "enroll-server", *args, "--listen", listen],
                                     cwd=cwd, env={**os.environ, **env}, stdout=subprocess.PIPE,
                                     stderr=open(self.log, "ab"), text=True, start_new_session=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # bounded: the process prints it or exits
        m = re.search(r"ACME directory (https://\S+/acme/directory);", line)
        if m is None:
            self.stop()
            raise AssertionError(f"enroll-server did not start: {line!r} {self.log.read_text()}")
        self.directory = m.group(1)
        self.url = self.directory[: -len("/acme/directory")]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


class SourceAddress(HTTPAdapter):
    """Connections from another loopback address (127.0.0.2 …): a second client as the server counts them."""

    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


def session_from(address: str, verify: str) -> requests.Session:
    s = requests.Session()
    s.mount("https://", SourceAddress(address))
    s.verify = verify
    return s


def es256_jws(key: ec.EllipticCurvePrivateKey, protected: dict[str, Any], payload: dict[str, Any] | None,
              unprotected: dict[str, Any] | None = None) -> bytes:
    """A flattened JWS built by hand, so a test can put header fields where a client must not."""
    prot = jose.b64encode(json.dumps(protected).encode()).decode()
    body = jose.b64encode(json.dumps(payload).encode()).decode() if payload is not None else ""
    der = key.sign(f"{prot}.{body}".encode(), ec.ECDSA(hashes.SHA256()))
    r, s = utils.decode_dss_signature(der)
    doc: dict[str, Any] = {"protected": prot, "payload": body,
                           "signature": jose.b64encode(r.to_bytes(32, "big") + s.to_bytes(32, "big")).decode()}
    if unprotected is not None:
        doc["header"] = unprotected
    return json.dumps(doc).encode()


def public_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    return jose.JWKEC(key=key.public_key()).to_partial_json()


def kill(proc: ServerProcess) -> None:
    """A crash, not a shutdown: SIGKILL."""
    proc.stop(signal.SIGKILL)
