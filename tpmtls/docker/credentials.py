"""Docker registry credentials sealed to this machine's TPM: the store behind
`docker-credential-tpmtls`.

One JSON file (`store_path()`: $TPMTLS_CREDENTIALS_FILE, else `tpmtls-credentials.json` in
$DOCKER_CONFIG, else in ~/.docker — beside the config.json that names the helper), mode
0600, replaced atomically, updates serialised by an flock on the file's directory. Per entry:
server URL and username in clear (what `list` shows), and the secret encrypted with
AES-256-GCM under a fresh 32-byte data key that is itself sealed to the TPM
(tpmtls.tpm.seal: a fixedTPM sealed data object under the owner SRK). Why a sealed data
key and not the secret sealed directly: a sealed object holds at most 128 bytes and
identity tokens (OAuth2 refresh tokens, JWTs) are often longer; the GCM tag, with the
server URL and username as associated data, also stops an entry's secret being moved to
another server's entry. A copy of the file on another machine is useless: its TPM cannot
load the sealed keys. Nothing here logs; no D-Bus secret service, no GPG agent.
"""

from __future__ import annotations

import base64
import binascii
import errno
import fcntl
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator
from urllib.parse import urlsplit

from .._files import write_atomic
from ..errors import KeyFileError, TpmtlsError

if TYPE_CHECKING:
    from ..tpm.device import Tpm

# The TPM (tpm2-pytss) and AES-GCM are imported where a secret is sealed or opened: docker
# runs the helper for every pull and push, and `get` of an unknown server, `list` and
# `erase` need neither (docs/performance.md, "Start-up").

FILE_NAME = "tpmtls-credentials.json"
FORMAT = "tpmtls docker credentials"
VERSION = 1
TOKEN_USER = "<token>"  # the username that says "Secret is an identity token" (credential-helper protocol)
LOCK_WAIT = 30.0  # seconds a store/erase waits for another one on the same file

# docker-credential-helpers' exact texts (credentials/error.go); the docker CLI matches them.
NOT_FOUND = "credentials not found in native keychain"
NO_SERVER_URL = "no credentials server URL"
NO_USERNAME = "no credentials username"


class CredentialsError(TpmtlsError):
    """The credential store cannot do what was asked (bad input, unreadable file, other TPM)."""


class CredentialsNotFound(CredentialsError):
    """No entry for that server: the protocol's not-found error."""

    def __init__(self) -> None:
        super().__init__(NOT_FOUND)


@dataclass(frozen=True)
class Entry:
    """Credentials for one server: `secret` is a password, or an identity token when the
    username is `<token>`. Its repr never shows the secret."""

    server_url: str
    username: str
    secret: str

    def __repr__(self) -> str:
        return f"Entry(server_url={self.server_url!r}, username={self.username!r})"


def store_path() -> Path:
    """$TPMTLS_CREDENTIALS_FILE > $DOCKER_CONFIG/tpmtls-credentials.json > ~/.docker/tpmtls-credentials.json."""
    explicit = os.environ.get("TPMTLS_CREDENTIALS_FILE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("DOCKER_CONFIG")
    return (Path(base) if base else Path.home() / ".docker") / FILE_NAME


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _aad(server_url: str, username: str) -> bytes:
    return json.dumps([FORMAT, VERSION, server_url, username]).encode()


def _host(server_url: str) -> str:
    """`https://host:port/v1/` and `host:port` name the same registry: compare by host[:port]."""
    url = server_url.strip()
    if "://" not in url:
        url = "//" + url
    return urlsplit(url).netloc.lower()


class CredentialStore:
    """The sealed credential file of one user, read and written through one TPM."""

    def __init__(self, tpm: Tpm | None = None, path: str | os.PathLike[str] | None = None) -> None:
        self._tpm = tpm
        self.path = Path(path) if path is not None else store_path()

    @property
    def tpm(self) -> Tpm:
        # Connected only when a secret is sealed or unsealed: `list` and `erase` need no TPM.
        if self._tpm is None:
            from ..tpm.device import connect

            self._tpm = connect()
        return self._tpm

    # -- the protocol's four operations --------------------------------------------

    def store(self, entry: Entry) -> None:
        """Add or replace the entry for `entry.server_url`, sealing its secret to the TPM."""
        if not entry.server_url:
            raise CredentialsError(NO_SERVER_URL)
        if not entry.username:
            raise CredentialsError(NO_USERNAME)
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        from ..tpm.seal import seal

        data_key = AESGCM.generate_key(bit_length=256)
        sealed = seal(self.tpm, data_key)
        nonce = os.urandom(12)
        ciphertext = AESGCM(data_key).encrypt(nonce, entry.secret.encode(), _aad(entry.server_url, entry.username))
        record = {
            "username": entry.username,
            "sealed": {"public": _b64(sealed.public), "private": _b64(sealed.private), "srk": sealed.srk_name.hex()},
            "nonce": _b64(nonce),
            "secret": _b64(ciphertext),
        }
        with self._locked():
            entries = self._read()
            entries[entry.server_url] = record
            self._write(entries)

    def get(self, server_url: str) -> Entry:
        """The entry for `server_url` (exactly, else the one entry for the same host[:port])."""
        if not server_url:
            raise CredentialsError(NO_SERVER_URL)
        key, record = self._find(self._read(), server_url)
        return Entry(server_url, record["username"], self._open(key, record))

    def erase(self, server_url: str) -> None:
        """Remove the entry for `server_url`; CredentialsNotFound when there is none."""
        if not server_url:
            raise CredentialsError(NO_SERVER_URL)
        self._find(self._read(), server_url)  # nothing to erase: said without touching the disk
        with self._locked():
            entries = self._read()
            key, _ = self._find(entries, server_url)
            del entries[key]
            self._write(entries)

    def list(self) -> dict[str, str]:
        """{server URL: username} of every entry (no TPM needed, no secret read)."""
        return {url: record["username"] for url, record in self._read().items()}

    # -- file ------------------------------------------------------------------------

    def _find(self, entries: dict[str, dict], server_url: str) -> tuple[str, dict]:
        if server_url in entries:
            return server_url, entries[server_url]
        host = _host(server_url)
        same = [url for url in entries if host and _host(url) == host]
        if len(same) == 1:
            return same[0], entries[same[0]]
        raise CredentialsNotFound()

    def _open(self, server_url: str, record: dict) -> str:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        from ..tpm.seal import SealedBlob, unseal

        where = f"{self.path}: entry {server_url!r}"
        try:
            sealed = SealedBlob(base64.b64decode(record["sealed"]["public"], validate=True),
                                base64.b64decode(record["sealed"]["private"], validate=True),
                                bytes.fromhex(record["sealed"]["srk"]))
            nonce = base64.b64decode(record["nonce"], validate=True)
            ciphertext = base64.b64decode(record["secret"], validate=True)
        except (KeyError, TypeError, ValueError, binascii.Error):
            raise CredentialsError(f"{where} is damaged; run 'docker logout' and 'docker login' again") from None
        try:
            data_key = unseal(self.tpm, sealed, where)
        except KeyFileError as e:
            again = f"docker login {_host(server_url) or server_url}"
            raise CredentialsError(f"{e}; log in again on this machine ({again})") from None
        try:
            return AESGCM(data_key).decrypt(nonce, ciphertext, _aad(server_url, record["username"])).decode()
        except Exception:  # noqa: BLE001 - InvalidTag or bad UTF-8: tampered, either way unusable
            raise CredentialsError(f"{where} fails its integrity check (edited or moved); log in again") from None

    def _read(self) -> dict[str, dict]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise CredentialsError(f"{self.path}: cannot read the credential store: {e.strerror}") from None
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError("not a tpmtls credential store")
            if data.get("version") != VERSION:
                raise ValueError(f"version {data.get('version')!r}, this tpmtls reads {VERSION}")
            entries = data["entries"]
            if not isinstance(entries, dict) or not all(
                isinstance(r, dict) and isinstance(r.get("username"), str) for r in entries.values()
            ):
                raise ValueError("entries are malformed")
        except (ValueError, KeyError, RecursionError) as e:
            raise CredentialsError(f"{self.path}: not a tpmtls credential store ({e}); move it away "
                                   "or set $TPMTLS_CREDENTIALS_FILE") from None
        return entries

    def _write(self, entries: dict[str, dict]) -> None:
        doc = {"format": FORMAT, "version": VERSION, "entries": entries}
        write_atomic(self.path, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode(), mode=0o600)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise read-modify-write of the store between helper processes (bounded wait).

        The lock is an flock on the store's directory, so no lock file is left beside the store
        (a failed store or erase leaves the directory as it was)."""
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as e:
            raise CredentialsError(f"{self.path}: cannot create the credential store: {e.strerror}") from None
        try:
            deadline = time.monotonic() + LOCK_WAIT
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as e:
                    if e.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                        raise CredentialsError(f"{self.path.parent}: another docker-credential-tpmtls held the "
                                               f"store for {LOCK_WAIT:.0f} s; try again") from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)


__all__ = ["CredentialStore", "CredentialsError", "CredentialsNotFound", "Entry", "NOT_FOUND", "NO_SERVER_URL",
           "NO_USERNAME", "TOKEN_USER", "store_path"]
