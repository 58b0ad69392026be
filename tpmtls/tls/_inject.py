"""`inject_into_ssl()` / `extract_from_ssl()`: plain stdlib `load_cert_chain` takes TPM key files.

All injection state lives in `_state` here (truststore's model: one flag, one patched
class, an undo that always works), and the process environment is never touched: the
TCTI given to `inject_into_ssl` is kept here and handed to the provider's loading.

The shim is in the system OpenSSL exactly while someone needs it: while injected, or
for the moment a tpmtls factory decodes its key (`system_provider()`). So a later
`ssl_context()` cannot silently re-enable plain decoding after `extract_from_ssl()`.
Keys already decoded keep working either way (they hold the provider).
"""

from __future__ import annotations

import os
import ssl
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Union

from .._lifecycle import in_forked_child
from ..provider import last_error, load_into_system_ssl, loading, unload_from_system_ssl
from ._errors import KeyLoadError
from ._handshake import TpmSSLObject, TpmSSLSocket

_Password = Union[str, bytes, bytearray, Callable[[], Union[str, bytes, bytearray]], None]


class _State:
    injected = False
    tcti: str | None = None
    users = 0  # factories decoding a key right now
    saved: dict[str, Any] = {}  # what ssl.SSLContext.__dict__ had for the names we patch


_state = _State()
_lock = threading.Lock()


def _new_lock_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # one held by another thread at fork() would never be released here


in_forked_child("injection lock", _new_lock_in_child)


def _sync() -> None:
    """Load or unload the shim so it is in the system OpenSSL iff someone needs it (lock held)."""
    if _state.injected or _state.users:
        load_into_system_ssl()
    else:
        unload_from_system_ssl()


@contextmanager
def system_provider() -> Iterator[None]:
    """Keep the shim in the system OpenSSL for the duration (a factory decoding its key)."""
    with _lock:
        _state.users += 1
        try:
            _sync()
        except BaseException:
            _state.users -= 1
            raise
    try:
        yield
    finally:
        with _lock:
            _state.users -= 1
            _sync()


def _load_cert_chain(self: ssl.SSLContext, certfile: Any, keyfile: Any = None, password: _Password = None) -> None:
    """`SSLContext.load_cert_chain` while injected: TPM keys load with the injected TCTI and
    `password`; a missing or wrong password is a clear `KeyLoadError`, never a prompt."""
    asked: list[bool] = []
    problems: list[BaseException] = []

    def answer() -> bytes:
        # OpenSSL's passphrase callback. Never let it raise: OpenSSL would go on to call
        # the shim's Python callbacks with the exception pending. No password: an empty
        # answer, not OpenSSL's default callback (which prompts on the terminal and blocks).
        asked.append(True)
        try:
            value = password() if callable(password) else password
            if value is None:
                return b""
            if isinstance(value, str):
                return value.encode()
            if isinstance(value, (bytes, bytearray)):
                return bytes(value)
            raise TypeError(f"password should be a string or bytes, not {type(value).__name__}")
        except Exception as e:  # noqa: BLE001 - re-raised below, once OpenSSL is done
            problems.append(e)
            return b""

    eager = password if isinstance(password, (str, bytes, bytearray)) else None
    name = os.fspath(keyfile if keyfile is not None else certfile)
    key_password = eager.encode() if isinstance(eager, str) else (bytes(eager) if eager is not None else None)
    if callable(password) and _tpm_key_with_password(name):
        # The shim takes TPM key passwords from us, never from OpenSSL's callback: ask now.
        key_password = answer() or None
        if problems:
            raise problems[0]
    with loading(name, _state.tcti, key_password):
        try:
            plain_load_cert_chain(self, certfile, keyfile, answer)
        except (ssl.SSLError, OSError) as e:
            if problems:
                raise problems[0] from None
            reason = last_error()
            if reason:
                raise KeyLoadError(reason) from None
            if asked and password is None:
                raise KeyLoadError(f"{name}: the key is encrypted and no password was given") from e
            raise


def _tpm_key_with_password(path: str) -> bool:
    """True for a TPM key file whose key has a password (False for software keys and unreadable files)."""
    from ..errors import TpmtlsError
    from ..tpm.keyfile import read_key_reference

    try:
        return not read_key_reference(path).empty_auth
    except (TpmtlsError, OSError, ValueError):
        return False


#: The stdlib's own method, for tpmtls's factories (which pass the TCTI and password themselves).
plain_load_cert_chain = ssl.SSLContext.load_cert_chain


def inject_into_ssl(tcti: str | None = None) -> None:
    """Let plain `ssl.SSLContext.load_cert_chain(cert, "client.key")` take TPM key files.

    Loads the shim into the system OpenSSL and patches one class, `ssl.SSLContext`
    (so every context, also ones requests, urllib3, http.client and docker-py make):
    `load_cert_chain` loads a TPM key with `tcti` (default: $TPMTLS_TCTI,
    $TPM2TOOLS_TCTI, /dev/tpmrm0, read at load time) and `password=`, and a key with a
    password but none given fails with a `KeyLoadError` (an `ssl.SSLError`) instead of
    OpenSSL's terminal prompt; its sockets raise `TpmHandshakeError` naming the TPM's
    reason when a handshake fails because the TPM could not sign.
    Undo with `extract_from_ssl()`; calling it again only changes the TCTI.
    """
    with _lock:
        _state.tcti = tcti
        if _state.injected:
            return
        _state.injected = True
        try:
            _sync()
        except BaseException:
            _state.injected = False
            raise
        patches = {"load_cert_chain": _load_cert_chain, "sslsocket_class": TpmSSLSocket,
                   "sslobject_class": TpmSSLObject}
        _state.saved = {name: ssl.SSLContext.__dict__.get(name, _ABSENT) for name in patches}
        for name, value in patches.items():
            setattr(ssl.SSLContext, name, value)


_ABSENT = object()


def extract_from_ssl() -> None:
    """Undo `inject_into_ssl()`: plain stdlib ssl no longer decodes TPM key files.

    Contexts that already hold a TPM key keep working; tpmtls's own factories
    (`ssl_context`, `requests_session`) work as before.
    """
    with _lock:
        if not _state.injected:
            return
        for name, value in _state.saved.items():
            if value is _ABSENT:
                delattr(ssl.SSLContext, name)
            else:
                setattr(ssl.SSLContext, name, value)
        _state.saved = {}
        _state.injected = False
        _state.tcti = None
        _sync()


def injected() -> bool:
    """True between `inject_into_ssl()` and `extract_from_ssl()`."""
    return _state.injected
