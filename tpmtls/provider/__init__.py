"""Loads the shim provider into both OpenSSLs of this process and answers its callbacks.

cryptography (and so pyOpenSSL) carries its own OpenSSL 4.x whose provider functions
are not exposed: it can only be given a provider through `OPENSSL_CONF`, read once
when cryptography is first imported. So `import tpmtls` calls `bootstrap()` before it
imports anything that imports cryptography; it writes a config listing the shim, sets
`OPENSSL_CONF` just around that import, and puts the environment back so no child
process inherits it (a leaked provider config killed swtpm: docs/facts-openssl.md,
"OPENSSL_CONF leaks into child processes"). The system
OpenSSL (stdlib `ssl`) exposes `OSSL_PROVIDER_*`, so the shim is loaded there on demand.
One private module per OpenSSL core: `_cryptography`, `_system`.

Python is called only while the interpreter runs: an exit step (tpmtls/_lifecycle.py)
tells the shim to stop (OpenSSL frees keys during the final garbage collection), and freed keys are queued in C
rather than reported by a callback, so a free can never crash at exit, deadlock on a
lock, or disturb a pending exception.

This module must not import cryptography at module level.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .._lifecycle import at_exit, in_forked_child
from . import _cryptography
from ._system import SystemOpenSSL

SHIM_RSA, SHIM_EC = 1, 2
PROVIDER_NAME = b"tpmtls"  # sorts after "default": OpenSSL prefers default's methods on ties

_here = Path(__file__).resolve().parent


class KeyInfo(ctypes.Structure):
    """Mirror of shim_keyinfo in shim.h."""

    _fields_ = [
        ("id", ctypes.c_uint64),
        ("type", ctypes.c_int),
        ("bits", ctypes.c_int),
        ("security_bits", ctypes.c_int),
        ("max_size", ctypes.c_int),
        ("group", ctypes.c_char * 32),
        ("pub", ctypes.c_ubyte * 1024),
        ("pub_len", ctypes.c_size_t),
        ("e", ctypes.c_ubyte * 16),
        ("e_len", ctypes.c_size_t),
    ]


_LOAD = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.POINTER(KeyInfo))
_PEM2DER = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t)
_SIGN = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_uint64, ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
    ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t),
)
_ERROR = ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t)


class _State:
    """What happened at bootstrap, for errors and `tpmtls doctor`."""

    path: Path | None = None
    lib: ctypes.CDLL | None = None
    problem: str | None = None  # why the shim is unusable altogether
    cryptography_first = False  # cryptography was imported before tpmtls
    in_cryptography = False  # cryptography's OpenSSL initialised the shim as it was imported
    system_provider: int | None = None  # the shim in the system OpenSSL: loaded once, never unloaded
    system_decoding = False  # plain `ssl` loads TPM key files now (a factory decoding, or injected)
    system: SystemOpenSSL | None = None
    callbacks: tuple[Any, ...] = ()

    @property
    def libcrypto(self) -> ctypes.CDLL | None:
        """The system libcrypto once the shim was loaded there (tests fetch algorithms through it)."""
        return self.system.lib if self.system is not None else None


state = _State()
# Two locks, each held only around a few dict or ctypes operations. Neither is ever
# taken by something OpenSSL can call from a garbage collection (frees go through a
# queue in C), so a collection while one is held cannot deadlock.
_system_lock = threading.Lock()
_keys_lock = threading.Lock()
_local = threading.local()


def _new_locks_in_child() -> None:
    # A lock another thread held at fork() would never be released in the child.
    global _system_lock, _keys_lock
    _system_lock, _keys_lock = threading.Lock(), threading.Lock()


in_forked_child("provider locks", _new_locks_in_child)
_keys: dict[int, Any] = {}
_next_id = iter(range(1, 2**62))


def shim_path() -> Path | None:
    """The built shim (setup.py names it without an ABI suffix: it is no Python module)."""
    path = _here / "_shim.so"
    return path if path.is_file() else None


# ---- callbacks (run on whatever thread OpenSSL calls from; ctypes takes the GIL) ----


def _set_error(message: str) -> None:
    _local.error = message


@contextmanager
def loading(source: str | None = None, tcti: str | None = None, password: bytes | None = None,
            pool: Any = None) -> Iterator[None]:
    """Name the key file, TCTI and key password for keys OpenSSL decodes on this thread meanwhile.

    The password goes straight to our load callback: no OpenSSL passphrase callback is
    needed (pyOpenSSL deprecates its one), and it is never stored beyond this block.
    """
    names = ("source", "tcti", "password", "pool")
    old = tuple(getattr(_local, n, None) for n in names)
    _local.source, _local.tcti, _local.password, _local.pool = source, tcti, password, pool
    _local.error = None
    try:
        yield
    finally:
        for name, value in zip(names, old, strict=True):
            setattr(_local, name, value)


def clear_error() -> None:
    """Forget this thread's last callback failure (before an operation whose failure we explain)."""
    _local.error = None


def last_error() -> str | None:
    """The last failure a callback reported on this thread (one line), if any."""
    return getattr(_local, "error", None)


def _load(der_p: int, der_len: int, expected: int, out: Any) -> int:
    try:
        from ..errors import KeyFileError, TpmtlsError
        from ..tpm import connect
        from ..tpm.keyfile import parse_key_bytes

        data = ctypes.string_at(der_p, der_len)
        source = getattr(_local, "source", None) or "TPM key"
        try:
            blob = parse_key_bytes(data, source)
        except KeyFileError:
            return 0  # not a TPM key: let other decoders try
        if blob.public is not None and _shim_type(blob.public.publicArea.type) != expected:
            return 0
        password = getattr(_local, "password", None)
        if not blob.empty_auth and password is None:
            _set_error(f"{source}: this key has a password and none was given "
                       f"(--password-file F; an empty one if the key was made without: tpm2_encodeobject without -p)")
            return -1
        try:
            key = connect(getattr(_local, "tcti", None), pool=getattr(_local, "pool", None)).load_blob(blob, password)
        except TpmtlsError as e:
            _set_error(str(e))
            return -1
        if _shim_type(key.tpm_public.publicArea.type) != expected:
            return 0
        _fill(out.contents, key)
        return 1
    except Exception as e:  # noqa: BLE001 - never let an exception cross into C
        _set_error(f"tpmtls: internal error loading key: {type(e).__name__}: {e}")
        return -1


def _shim_type(tpm_type: int) -> int:
    from tpm2_pytss.constants import TPM2_ALG

    return {int(TPM2_ALG.RSA): SHIM_RSA, int(TPM2_ALG.ECC): SHIM_EC}.get(int(tpm_type), 0)


def _fill(info: Any, key: Any) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    pub = key.public_key()
    if isinstance(pub, rsa.RSAPublicKey):
        numbers = pub.public_numbers()
        n = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
        e = numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")
        if len(n) > len(info.pub) or len(e) > len(info.e):
            raise ValueError(f"RSA key of {pub.key_size} bits is larger than the shim handles")
        info.type, info.bits, info.max_size = SHIM_RSA, pub.key_size, len(n)
        info.security_bits = {2048: 112, 3072: 128, 4096: 152}.get(pub.key_size, 112)
        ctypes.memmove(info.pub, n, len(n))
        info.pub_len = len(n)
        ctypes.memmove(info.e, e, len(e))
        info.e_len = len(e)
    elif isinstance(pub, ec.EllipticCurvePublicKey):
        point = pub.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        size = pub.curve.key_size
        info.type, info.bits, info.security_bits = SHIM_EC, size, size // 2
        info.max_size = 2 * ((size + 7) // 8) + 9  # DER SEQUENCE of two INTEGERs
        info.group = {"secp256r1": b"prime256v1", "secp384r1": b"secp384r1"}[pub.curve.name]
        ctypes.memmove(info.pub, point, len(point))
        info.pub_len = len(point)
    else:
        raise ValueError(f"unsupported key type {type(pub).__name__}")
    _forget_freed_keys()
    with _keys_lock:
        key_id = next(_next_id)
        _keys[key_id] = key
    info.id = key_id


def _forget_freed_keys() -> None:
    """Drop the key objects OpenSSL has freed since last time (queued by the shim)."""
    assert state.lib is not None
    batch = (ctypes.c_uint64 * 256)()
    for _ in range(1 << 16):  # bounded: 16M freed keys between two loads is not a real process
        count = state.lib.tpmtls_take_freed(batch, len(batch))
        if count:
            with _keys_lock:
                for key_id in batch[:count]:
                    _keys.pop(key_id, None)
        if count < len(batch):
            return


def live_keys() -> int:
    """How many TPM key objects OpenSSL holds (after forgetting freed ones); for tests and doctor."""
    if state.lib is not None:
        _forget_freed_keys()
    with _keys_lock:
        return len(_keys)


def _sign(key_id: int, md: bytes | None, pad_mode: int, saltlen: int, mgf1: bytes | None, prehashed: int,
          tbs_p: int, tbs_len: int, sig_p: int, sig_len_p: Any) -> int:
    try:
        from ..errors import TpmtlsError
        from ..tpm.signing import sign_for_openssl

        with _keys_lock:
            key = _keys.get(key_id)
        if key is None:
            _set_error("tpmtls: signing with a key the shim no longer knows")
            return 0
        data = ctypes.string_at(tbs_p, tbs_len)
        try:
            sig, scheme = sign_for_openssl(key, data, md.decode() if md else None, pad_mode, saltlen,
                                           mgf1.decode() if mgf1 else None, bool(prehashed))
        except TpmtlsError as e:
            _set_error(str(e))
            return 0
        capacity = sig_len_p.contents.value
        if len(sig) > capacity:
            _set_error(f"tpmtls: signature of {len(sig)} bytes does not fit OpenSSL's {capacity}")
            return 0
        ctypes.memmove(sig_p, sig, len(sig))
        sig_len_p.contents.value = len(sig)
        _local.last_scheme = scheme
        _local.signatures = getattr(_local, "signatures", 0) + 1
        return 1
    except Exception as e:  # noqa: BLE001 - never let an exception cross into C
        _set_error(f"tpmtls: internal error while signing: {type(e).__name__}: {e}")
        return 0


def signatures_on_this_thread() -> int:
    """How many TPM signatures OpenSSL asked for on this thread so far (handshakes count theirs)."""
    return int(getattr(_local, "signatures", 0))


def last_signature_scheme() -> str | None:
    """The TLS SignatureScheme name of this thread's last TPM signature (for `tpmtls connect`)."""
    return getattr(_local, "last_scheme", None)


def _pem2der(pem_p: int, pem_len: int, out_p: int, out_size: int) -> int:
    """The PEM decoder's callback: the DER of a TPM key PEM (0: not one, or damaged: not ours)."""
    try:
        from ..errors import KeyFileError
        from ..tpm.keyfile import tpm_key_der

        pem = ctypes.string_at(pem_p, pem_len)
        if b"-----BEGIN " not in pem:
            return 0  # DER goes to the DER decoders as it is
        try:
            der = tpm_key_der(pem)
        except KeyFileError:
            return 0
        if not der:
            return 0
        if len(der) > out_size:
            return -1
        ctypes.memmove(out_p, der, len(der))
        return len(der)
    except Exception as e:  # noqa: BLE001 - never let an exception cross into C
        _set_error(f"tpmtls: internal error decoding a key: {type(e).__name__}: {e}")
        return -1


def _error(buf_p: int, size: int) -> int:
    if size <= 0:
        return 0
    message = (getattr(_local, "error", None) or "").encode()[: size - 1]
    ctypes.memmove(buf_p, message + b"\0", len(message) + 1)
    return len(message)


# ---- loading ----


def bootstrap() -> None:
    """Register the callbacks and give cryptography's OpenSSL the shim (once, at import)."""
    if state.lib is not None or state.problem is not None:
        return
    path = shim_path()
    if path is None:
        state.problem = f"the shim provider is not built in {_here} (reinstall tpmtls: pip install -e .)"
        return
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        state.problem = f"cannot load the shim provider {path}: {e}"
        return
    lib.tpmtls_keyinfo_size.restype = ctypes.c_size_t
    if lib.tpmtls_keyinfo_size() != ctypes.sizeof(KeyInfo):
        state.problem = (f"the shim provider {path} does not match this tpmtls (key info of "
                         f"{lib.tpmtls_keyinfo_size()} bytes, expected {ctypes.sizeof(KeyInfo)}); reinstall tpmtls")
        return
    lib.tpmtls_take_freed.restype = ctypes.c_size_t
    lib.tpmtls_take_freed.argtypes = [ctypes.POINTER(ctypes.c_uint64), ctypes.c_size_t]
    lib.tpmtls_set_decoding.argtypes = [ctypes.c_void_p, ctypes.c_int]
    callbacks = (_LOAD(_load), _PEM2DER(_pem2der), _SIGN(_sign), _ERROR(_error))
    lib.tpmtls_set_callbacks(*callbacks)
    state.path, state.lib, state.callbacks = path, lib, callbacks  # keep the thunks alive
    # First of the exit steps: after the atexit hooks of anything imported later (their
    # TLS clean-up may still sign), before the pools close and the interpreter frees modules.
    at_exit("shim", lib.tpmtls_shutdown)
    if "cryptography.hazmat.bindings._rust" in sys.modules:
        state.cryptography_first = True
        return
    _cryptography.load(path)
    # now, before the system OpenSSL's load adds an initialisation of its own to the count
    state.in_cryptography = lib.tpmtls_init_count() > 0


def in_cryptography() -> bool:
    """True when cryptography's OpenSSL (pyOpenSSL) has the shim."""
    return state.in_cryptography


def require_cryptography() -> None:
    """Raise the one-line explanation when pyOpenSSL cannot use TPM keys in this process."""
    from ..errors import ProviderError

    if state.problem:
        raise ProviderError(state.problem)
    if state.cryptography_first:
        raise ProviderError(
            "cryptography was imported before tpmtls, so its OpenSSL (pyOpenSSL) cannot load the TPM "
            "provider: import tpmtls first, before cryptography, OpenSSL, requests or docker "
            "(the stdlib ssl path, tpmtls.ssl_context, still works)"
        )
    if not in_cryptography():
        raise ProviderError(f"cryptography's OpenSSL (pyOpenSSL) did not load the tpmtls provider: {not_loaded_why()}")


def not_loaded_why() -> str:
    """What to check when cryptography's OpenSSL read tpmtls's config and still lacks the shim."""
    user = os.environ.get("OPENSSL_CONF")
    if user:
        return (f"OpenSSL skips a config it cannot parse, and tpmtls's includes $OPENSSL_CONF ({user}): "
                "check that file, or unset OPENSSL_CONF")
    return "its OpenSSL read no provider configuration; reinstall tpmtls and cryptography"


def load_into_system_ssl() -> None:
    """Load the shim into the system OpenSSL (stdlib ssl) and let it decode TPM key files.

    Loaded once and never unloaded: TPM keys sign through it, and OpenSSL 3.0 deactivating
    it under them left its EC/RSA key managers as the answer for every software key and
    TLS group (docs/provider.md, "Keys sign through an active provider"). Idempotent and
    thread-safe.
    """
    from ..errors import ProviderError

    with _system_lock:
        if state.system_decoding:
            return
        if state.problem:
            raise ProviderError(state.problem)
        assert state.lib is not None
        if state.system_provider is None:
            try:
                system = state.system or SystemOpenSSL()
            except OSError as e:
                raise ProviderError(str(e)) from None
            handle = system.load(PROVIDER_NAME, ctypes.cast(state.lib.OSSL_provider_init, ctypes.c_void_p))
            if handle is None:
                said = "; ".join(dict.fromkeys(system.errors())) or "no reason given"
                raise ProviderError(f"the system OpenSSL ({system.version}) refused the tpmtls provider {state.path} "
                                    f"({said}): does an OpenSSL config ($OPENSSL_CONF) name a provider "
                                    f"'{PROVIDER_NAME.decode()}' of its own?")
            # first after the activation emptied OpenSSL's method cache: the default provider's
            # key managers become the answer for "RSA"/"EC" from any provider, not ours
            system.fetch_key_managers((b"RSA", b"EC"))
            state.system, state.system_provider = system, handle
        assert state.system is not None
        state.lib.tpmtls_set_decoding(state.system.provider_ctx(state.system_provider), 1)
        state.system_decoding = True


def stop_decoding_in_system_ssl() -> None:
    """Plain `ssl` no longer loads TPM key files (keys already loaded keep signing)."""
    with _system_lock:
        if not state.system_decoding or state.system is None or state.system_provider is None:
            return
        assert state.lib is not None
        state.lib.tpmtls_set_decoding(state.system.provider_ctx(state.system_provider), 0)
        state.system_decoding = False


def init_count() -> int:
    """How many OpenSSL cores initialised the shim in this process."""
    return int(state.lib.tpmtls_init_count()) if state.lib is not None else 0
