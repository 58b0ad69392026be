"""Loads the shim provider into both OpenSSLs of this process and answers its callbacks.

cryptography (and so pyOpenSSL) carries its own OpenSSL 4.x whose provider functions
are not exposed: it can only be given a provider through `OPENSSL_CONF`, read once
when cryptography is first imported. So `import tpmtls` calls `bootstrap()` before it
imports anything that imports cryptography; it writes a config listing the shim, sets
`OPENSSL_CONF` just around that import, and puts the environment back so no child
process inherits it (FINDINGS: a leaked provider config killed swtpm). The system
OpenSSL (stdlib `ssl`) exposes `OSSL_PROVIDER_*`, so the shim is loaded there on demand.

This module must not import cryptography at module level.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

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


_LOAD = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t,
    ctypes.POINTER(KeyInfo),
)
_PEM2DER = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t)
_SIGN = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_uint64, ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
    ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t),
)
_FREE = ctypes.CFUNCTYPE(None, ctypes.c_uint64)
_ERROR = ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t)


class _State:
    """What happened at bootstrap, for errors and `tpmtls doctor`."""

    path: Path | None = None
    lib: ctypes.CDLL | None = None
    problem: str | None = None  # why the shim is unusable altogether
    cryptography_first = False  # cryptography was imported before tpmtls
    system_loaded = False
    system_provider: int | None = None
    callbacks: tuple[Any, ...] = ()


state = _State()
_lock = threading.Lock()
_local = threading.local()
_keys: dict[int, Any] = {}
_next_id = iter(range(1, 2**62))


def shim_path() -> Path | None:
    found = sorted(_here.glob("_shim*.so"))
    return found[0] if found else None


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
        for name, value in zip(names, old):
            setattr(_local, name, value)


def last_error() -> str | None:
    """The last failure a callback reported on this thread (one line), if any."""
    return getattr(_local, "error", None)


def _load(der_p: int, der_len: int, expected: int, pw_p: int | None, pw_len: int, out: Any) -> int:
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
        password = ctypes.string_at(pw_p, pw_len) if pw_p else getattr(_local, "password", None)
        if not blob.empty_auth and not password:
            # The shim now asks OpenSSL's passphrase callback and calls us again; if
            # nobody answers, this is the reason the caller gets.
            _set_error(f"{source}: this key has a password and none was given (password=...)")
            return 2
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
    with _lock:
        key_id = next(_next_id)
        _keys[key_id] = key
    info.id = key_id
    if isinstance(pub, rsa.RSAPublicKey):
        numbers = pub.public_numbers()
        n = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
        e = numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")
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


_HASH_NAMES = {"SHA1": "sha1", "SHA256": "sha256", "SHA2256": "sha256", "SHA384": "sha384", "SHA2384": "sha384",
               "SHA512": "sha512", "SHA2512": "sha512"}


def _hash(name: bytes | None, digest_len: int | None, key: Any) -> Any:
    from cryptography.hazmat.primitives import hashes

    by_name: dict[str, type[hashes.HashAlgorithm]] = {
        "sha1": hashes.SHA1, "sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}
    text = (name or b"").decode().upper().replace("-", "").replace("_", "")
    if text:
        if text not in _HASH_NAMES:
            raise ValueError(f"digest {text} is not one the TPM signs")
        return by_name[_HASH_NAMES[text]]()
    if digest_len is not None:
        by_size: dict[int, type[hashes.HashAlgorithm]] = {
            20: hashes.SHA1, 32: hashes.SHA256, 48: hashes.SHA384, 64: hashes.SHA512}
        return by_size[digest_len]()
    return hashes.SHA384() if getattr(key, "key_size", 0) == 384 else hashes.SHA256()


def _sign(key_id: int, md: bytes | None, pad_mode: int, saltlen: int, mgf1: bytes | None, prehashed: int,
          tbs_p: int, tbs_len: int, sig_p: int, sig_len_p: Any) -> int:
    try:
        from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

        from ..errors import TpmtlsError

        key = _keys.get(key_id)
        if key is None:
            _set_error("tpmtls: signing with a key the shim no longer knows")
            return 0
        data = ctypes.string_at(tbs_p, tbs_len)
        alg = _hash(md, tbs_len if prehashed else None, key)
        algorithm = utils.Prehashed(alg) if prehashed else alg
        try:
            if isinstance(key, rsa.RSAPrivateKey):
                pad: padding.AsymmetricPadding
                if pad_mode == 6:
                    salt: Any = {-1: padding.PSS.DIGEST_LENGTH, -2: padding.PSS.MAX_LENGTH, -3: padding.PSS.MAX_LENGTH,
                            -4: padding.PSS.DIGEST_LENGTH}.get(saltlen, saltlen)
                    pad = padding.PSS(padding.MGF1(_hash(mgf1, None, key) if mgf1 else alg), salt)
                    scheme = f"rsa_pss_rsae_{alg.name}"
                else:
                    pad, scheme = padding.PKCS1v15(), f"rsa_pkcs1_{alg.name}"
                sig = key.sign(data, pad, algorithm)
            else:
                sig = key.sign(data, ec.ECDSA(algorithm))
                scheme = f"ecdsa_{key.curve.name}_{alg.name}"
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
        return 1
    except Exception as e:  # noqa: BLE001 - never let an exception cross into C
        _set_error(f"tpmtls: internal error while signing: {type(e).__name__}: {e}")
        return 0


def last_signature_scheme() -> str | None:
    """The TLS SignatureScheme name of this thread's last TPM signature (for `tpmtls connect`)."""
    return getattr(_local, "last_scheme", None)


def _free(key_id: int) -> None:
    with _lock:
        _keys.pop(key_id, None)


_PEM = re.compile(rb"-----BEGIN (TSS2 PRIVATE KEY|TPMTLS KEY HANDLE)-----\r?\n(.*?)-----END \1-----", re.S)


def _pem2der(pem_p: int, pem_len: int, out_p: int, out_size: int) -> int:
    import base64
    import binascii

    m = _PEM.search(ctypes.string_at(pem_p, pem_len))
    if not m:
        return 0
    try:
        der = base64.b64decode(re.sub(rb"\s+", b"", m.group(2)), validate=True)
    except (binascii.Error, ValueError):
        return 0
    if not der or len(der) > out_size:
        return -1
    ctypes.memmove(out_p, der, len(der))
    return len(der)


def _error(buf_p: int, size: int) -> int:
    message = (getattr(_local, "error", None) or "").encode()[: max(0, size - 1)]
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
    callbacks = (_LOAD(_load), _PEM2DER(_pem2der), _SIGN(_sign), _FREE(_free), _ERROR(_error))
    lib.tpmtls_set_callbacks(*callbacks)
    state.path, state.lib, state.callbacks = path, lib, callbacks  # keep the thunks alive
    if "cryptography.hazmat.bindings._rust" in sys.modules:
        state.cryptography_first = True
        return
    _load_into_cryptography(path)


def _load_into_cryptography(path: Path) -> None:
    previous = os.environ.get("OPENSSL_CONF")
    include = f".include {previous}\n" if previous and os.path.isfile(previous) else ""
    config = (
        f"{include}"
        "openssl_conf = tpmtls_init\n"
        "[tpmtls_init]\nproviders = tpmtls_providers\n"
        "[tpmtls_providers]\ndefault = tpmtls_default\ntpmtls = tpmtls_shim\n"
        "[tpmtls_default]\nactivate = 1\n"
        f"[tpmtls_shim]\nmodule = {path}\nactivate = 1\n"
    )
    with tempfile.TemporaryDirectory(prefix="tpmtls-ossl-") as tmp:
        conf = Path(tmp) / "openssl.cnf"
        conf.write_text(config)
        os.environ["OPENSSL_CONF"] = str(conf)
        try:
            import cryptography.hazmat.bindings._rust  # noqa: F401 - initialises its OpenSSL now
        finally:
            if previous is None:
                os.environ.pop("OPENSSL_CONF", None)
            else:
                os.environ["OPENSSL_CONF"] = previous


def in_cryptography() -> bool:
    """True when cryptography's OpenSSL (pyOpenSSL) has the shim."""
    return state.lib is not None and not state.cryptography_first and state.lib.tpmtls_init_count() > 0


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
        raise ProviderError("cryptography's OpenSSL did not load the tpmtls provider (see 'tpmtls doctor')")


def _system_libcrypto() -> ctypes.CDLL:
    import _ssl  # the stdlib's OpenSSL: make sure it is mapped, then find it by soname

    names = [ctypes.util.find_library("crypto"), "libcrypto.so.3"]
    for name in filter(None, names):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.OpenSSL_version.restype = ctypes.c_char_p
        lib.OpenSSL_version.argtypes = [ctypes.c_int]
        if lib.OpenSSL_version(0).decode() == _ssl.OPENSSL_VERSION:
            return lib
    raise OSError(f"cannot find the libcrypto behind the ssl module ({_ssl.OPENSSL_VERSION})")


def load_into_system_ssl() -> None:
    """Load the shim into the system OpenSSL (stdlib ssl); idempotent and thread-safe."""
    from ..errors import ProviderError

    with _lock:
        if state.system_loaded:
            return
        if state.problem:
            raise ProviderError(state.problem)
        assert state.lib is not None
        try:
            libcrypto = _system_libcrypto()
        except OSError as e:
            raise ProviderError(str(e)) from None
        libcrypto.OSSL_PROVIDER_available.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        libcrypto.OSSL_PROVIDER_load.restype = ctypes.c_void_p
        libcrypto.OSSL_PROVIDER_load.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        libcrypto.OSSL_PROVIDER_add_builtin.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
        # Loading any provider explicitly stops OpenSSL from loading the default one by
        # itself; make sure it is there so software keys, digests and ciphers keep working.
        if not libcrypto.OSSL_PROVIDER_available(None, b"default"):
            libcrypto.OSSL_PROVIDER_load(None, b"default")
        init = ctypes.cast(state.lib.OSSL_provider_init, ctypes.c_void_p)
        libcrypto.OSSL_PROVIDER_add_builtin(None, PROVIDER_NAME, init)
        provider = libcrypto.OSSL_PROVIDER_load(None, PROVIDER_NAME)
        if not provider:
            raise ProviderError(f"the system OpenSSL ({_ssl_version()}) refused the tpmtls provider {state.path}")
        state.system_provider = provider
        state.system_loaded = True
        state.libcrypto = libcrypto  # type: ignore[attr-defined]


def unload_from_system_ssl() -> None:
    """Undo `load_into_system_ssl` (keys already in contexts keep working)."""
    with _lock:
        if not state.system_loaded:
            return
        lib = state.libcrypto  # type: ignore[attr-defined]
        lib.OSSL_PROVIDER_unload.argtypes = [ctypes.c_void_p]
        lib.OSSL_PROVIDER_unload(state.system_provider)
        state.system_loaded = False
        state.system_provider = None


def _ssl_version() -> str:
    import ssl

    return ssl.OPENSSL_VERSION


def init_count() -> int:
    """How many OpenSSL cores initialised the shim in this process."""
    return int(state.lib.tpmtls_init_count()) if state.lib is not None else 0
