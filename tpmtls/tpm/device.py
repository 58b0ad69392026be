"""`tpmtls.connect()`: one TPM, reached through the process-wide pool for its TCTI."""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from tpm2_pytss.constants import TPM2_ALG, TPM2_CAP, TPM2_PT, TPMA_OBJECT
from tpm2_pytss.types import (
    TPM2B_DATA,
    TPM2B_DIGEST,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE,
    TPM2B_SENSITIVE_CREATE,
    TPML_PCR_SELECTION,
    TPMT_SIG_SCHEME,
    TPMT_SYM_DEF_OBJECT,
    TPMU_SYM_KEY_BITS,
    TPMU_SYM_MODE,
)
from tpm2_pytss.utils import wrap

from .._files import check_writable, write_atomic
from ..errors import KeyAuthError, KeyFileError, UsageError
from .context import TpmContext
from .keyfile import OWNER, KeyBlob, read_key_reference
from .keys import AnyTpmKey, TpmKey, make_key
from .pool import Pool, default_pool
from .templates import ALGORITHMS, key_template

_AES128_CFB = TPMT_SYM_DEF_OBJECT(
    algorithm=TPM2_ALG.AES, keyBits=TPMU_SYM_KEY_BITS(aes=128), mode=TPMU_SYM_MODE(aes=TPM2_ALG.CFB)
)

# TPM 2.0 Part 2, 6.13 (TPM_PT): not all are named in tpm2-pytss's TPM2_PT.
_PT_VENDOR_STRING_1 = 0x106
_PT_FIRMWARE_VERSION_1 = 0x10B


@dataclass(frozen=True)
class TpmInfo:
    """What `tpmtls doctor` shows about a TPM."""

    tcti: str
    manufacturer: str
    vendor: str
    firmware: str
    spec: str
    has_ecc: bool
    has_rsa: bool


def _probe_scheme(public: TPM2B_PUBLIC) -> TPMT_SIG_SCHEME:
    alg = TPM2_ALG.ECDSA if public.publicArea.type == TPM2_ALG.ECC else TPM2_ALG.RSASSA
    scheme = TPMT_SIG_SCHEME(scheme=alg)
    scheme.details.any.hashAlg = TPM2_ALG.SHA256
    return scheme


SUPPORTED_IMPORTS = "tpmtls imports RSA 2048/3072 (e=65537) and ECC P-256/P-384 keys, what TPM 2.0 chips support"


def check_importable(pem: bytes, pem_password: bytes | None, source: object) -> None:
    """Refuse, in one line, keys no TPM (or no TLS client) should take, before the TPM sees them."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    try:
        key = load_pem_private_key(pem, pem_password)
    except TypeError as e:
        raise KeyFileError(f"{source}: {e}; give the PEM's password") from None
    except ValueError as e:
        raise KeyFileError(f"{source}: not a PEM private key ({str(e).splitlines()[0]})") from None
    except Exception as e:  # noqa: BLE001 - e.g. UnsupportedAlgorithm
        raise KeyFileError(f"{source}: cannot read private key: {e}") from None
    if isinstance(key, rsa.RSAPrivateKey):
        bits, exponent = key.key_size, key.public_key().public_numbers().e
        if bits < 2048:
            raise KeyFileError(f"{source}: RSA-{bits} is too weak for TLS client keys (2048 bits at least); "
                               "create a new key in the TPM instead")
        if bits not in (2048, 3072) or exponent != 65537:
            raise KeyFileError(f"{source}: RSA-{bits} with e={exponent} cannot be imported: {SUPPORTED_IMPORTS}")
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name not in ("secp256r1", "secp384r1"):
            raise KeyFileError(f"{source}: EC curve {key.curve.name} cannot be imported: {SUPPORTED_IMPORTS}")
    else:
        kind = type(key).__name__.replace("PrivateKey", "").lstrip("_")
        raise KeyFileError(f"{source}: {kind} keys cannot go into a TPM 2.0: {SUPPORTED_IMPORTS}")


def importable_objects(pem: bytes, pem_password: bytes | None, source: object,
                       auth: bytes | None = None) -> tuple[TPM2B_PUBLIC, TPM2B_SENSITIVE]:
    """The TPM public and sensitive areas of an external key, checked for what a TPM and TLS take.

    Attributes as for keys tpmtls creates: sign (and decrypt for RSA: raw RSA under
    software PSS padding, see templates.key_attributes); passwordless keys are noDA.
    """
    check_importable(pem, pem_password, source)
    attrs = TPMA_OBJECT.USERWITHAUTH | TPMA_OBJECT.SIGN_ENCRYPT
    try:
        public = TPM2B_PUBLIC.from_pem(pem, objectAttributes=attrs, password=pem_password)
        sensitive = TPM2B_SENSITIVE.from_pem(pem, password=pem_password)
    except ValueError as e:
        raise KeyFileError(f"{source}: this key type cannot go into a TPM: {e}") from None
    if public.publicArea.type == TPM2_ALG.RSA:
        public.publicArea.objectAttributes |= TPMA_OBJECT.DECRYPT
    if auth is None:
        public.publicArea.objectAttributes |= TPMA_OBJECT.NODA
    else:
        sensitive.sensitiveArea.authValue = auth
    return public, sensitive


def _password(password: bytes | str | None) -> bytes | None:
    if password is None or password == b"" or password == "":
        return None
    return password.encode() if isinstance(password, str) else bytes(password)


class Tpm:
    """A TPM reached over one TCTI. Keys it creates or loads sign through its pool."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    @property
    def tcti(self) -> str:
        return self.pool.tcti

    def create_key(
        self,
        alg: str = "ecc-p256",
        path: str | os.PathLike[str] | None = None,
        password: bytes | str | None = None,
        *,
        overwrite: bool = False,
    ) -> AnyTpmKey:
        """Create a key inside the TPM (fixedTPM|fixedParent|sensitiveDataOrigin) under the SRK.

        With `path`, the key file (a TSS2 PRIVATE KEY, wrapped by this TPM) is written
        atomically; without, keep it with `key.to_pem()`.
        """
        if alg not in ALGORITHMS:
            raise UsageError(f"unknown key algorithm {alg!r}: choose one of {', '.join(ALGORITHMS)}")
        out = check_writable(path, overwrite) if path is not None else None
        auth = _password(password)
        template = TPM2B_PUBLIC(publicArea=key_template(alg, auth is not None))
        sensitive = TPM2B_SENSITIVE_CREATE()
        if auth:
            sensitive.sensitive.userAuth = auth

        def fn(ctx: TpmContext) -> tuple[object, TPM2B_PUBLIC]:
            parent, _ = ctx.srk("ecc")
            private, public, _, _, _ = ctx.esapi.create(parent, sensitive, template, TPM2B_DATA(), TPML_PCR_SELECTION())
            return private, public

        private, public = self.pool.run(f"create {alg} key", fn)
        return self._finish(private, public, auth, out)

    def import_key(
        self,
        pem: bytes,
        path: str | os.PathLike[str] | None = None,
        password: bytes | str | None = None,
        *,
        pem_password: bytes | None = None,
        overwrite: bool = False,
        source: str = "<pem>",
    ) -> AnyTpmKey:
        """Import an external RSA or EC private key: from now on only this TPM can use it.

        The key is wrapped for the SRK in software (tpm2-pytss `wrap`: inner AES and an
        outer seed encrypted to the SRK), so it crosses the TPM bus encrypted; the clear
        PEM is never written by tpmtls. Imported keys cannot be fixedTPM (TPM2_Import).
        """
        out = check_writable(path, overwrite) if path is not None else None
        auth = _password(password)
        public, sensitive = importable_objects(pem, pem_password, source, auth)

        def fn(ctx: TpmContext) -> tuple[object, TPM2B_PUBLIC]:
            parent, srk_public = ctx.srk("ecc")
            enckey, duplicate, seed = wrap(srk_public.publicArea, public, sensitive, symdef=_AES128_CFB)
            private = ctx.esapi.import_(parent, enckey, public, duplicate, seed, _AES128_CFB)
            return private, public

        private, imported = self.pool.run("import key", fn)
        return self._finish(private, imported, auth, out)

    def load_key(self, ref: str | os.PathLike[str] | AnyTpmKey, password: bytes | str | None = None) -> AnyTpmKey:
        """Load a key reference: a TSS2 key file, 'handle:0x81…', the handle form, or a key."""
        if isinstance(ref, TpmKey):
            return ref  # type: ignore[return-value]
        return self.load_blob(read_key_reference(ref), password)

    def load_blob(self, blob: KeyBlob, password: bytes | str | None = None) -> AnyTpmKey:
        """Load a parsed key: checks here that the TPM takes it, so errors surface early.

        An empty `password` is the empty password, tried as given: a key file flagged as having
        a password may have an empty one (tpm2_encodeobject without -p writes such files, and
        tpm2-openssl takes the empty password for them). None means none was given."""
        if not blob.empty_auth and password is None:
            raise KeyAuthError(f"{blob.source}: this key has a password and none was given "
                               f"(--password-file F; an empty one if the key was made without: tpm2_encodeobject without -p)")
        auth = _password(password)
        if not blob.empty_auth and auth is None:
            auth = b""  # the empty password, proved like any other below
        if auth and blob.empty_auth and not blob.is_persistent:  # the file says its password is empty
            raise KeyAuthError(f"{blob.source}: this key has no password, but one was given: "
                               "leave out --password-file (password=)")

        def fn(ctx: TpmContext) -> TPM2B_PUBLIC:
            handle = ctx.key(blob, auth)
            if blob.is_persistent:
                public, _, _ = ctx.esapi.read_public(handle)
            else:
                assert blob.public is not None
                public = blob.public
            if auth is not None and public.publicArea.objectAttributes & TPMA_OBJECT.SIGN_ENCRYPT:
                # TPM2_Load authorizes with the parent, not the key: prove the password
                # now (one signature of a zero digest) rather than at the first handshake.
                ctx.esapi.sign(handle, TPM2B_DIGEST(bytes(32)), _probe_scheme(public))
            return public

        public = self.pool.run("load key", fn, blob)
        return make_key(self.pool, blob, public, auth)

    def info(self) -> TpmInfo:
        """Manufacturer, firmware and algorithms, read from TPM2_GetCapability."""

        def fn(ctx: TpmContext) -> TpmInfo:
            esapi = ctx.esapi
            _, data = esapi.get_capability(TPM2_CAP.TPM_PROPERTIES, TPM2_PT.FIXED, 64)
            props = {int(p.property): int(p.value) for p in data.data.tpmProperties}

            def text(*keys: int) -> str:
                raw = b"".join(props.get(k, 0).to_bytes(4, "big") for k in keys)
                return raw.replace(b"\0", b"").decode("ascii", "replace").strip()

            fw1, fw2 = props.get(_PT_FIRMWARE_VERSION_1, 0), props.get(_PT_FIRMWARE_VERSION_1 + 1, 0)
            algs: set[int] = set()
            more, start = True, 0
            for _ in range(16):  # bounded: a TPM lists well under 16 pages of algorithms
                if not more:
                    break
                more, data = esapi.get_capability(TPM2_CAP.ALGS, start, 64)
                listed = [int(a.alg) for a in data.data.algorithms]
                algs.update(listed)
                start = max(listed, default=start) + 1
            level = props.get(int(TPM2_PT.LEVEL), 0)
            revision = props.get(int(TPM2_PT.REVISION), 0)
            return TpmInfo(
                tcti=self.tcti,
                manufacturer=text(int(TPM2_PT.MANUFACTURER)),
                vendor=text(*range(_PT_VENDOR_STRING_1, _PT_VENDOR_STRING_1 + 4)),
                firmware=f"{fw1 >> 16}.{fw1 & 0xFFFF}.{fw2 >> 16}.{fw2 & 0xFFFF}",
                spec=f"2.0 level {level} revision {revision / 100:.2f}",
                has_ecc=int(TPM2_ALG.ECC) in algs,
                has_rsa=int(TPM2_ALG.RSA) in algs,
            )

        return self.pool.run("read TPM properties", fn)

    def _finish(self, private: object, public: TPM2B_PUBLIC, auth: bytes | None, out: object) -> AnyTpmKey:
        blob = KeyBlob(
            source=str(out) if out is not None else "<new key>",
            parent=OWNER,
            public=public,
            private=private,  # type: ignore[arg-type]
            empty_auth=auth is None,
        )
        if out is not None:  # a key file replaced (overwrite=True, --force) is kept as FILE.bak
            write_atomic(out, blob.to_pem(), keep=True)  # type: ignore[arg-type]
        return make_key(self.pool, blob, public, auth)


def connect(tcti: str | None = None, *, pool: Pool | None = None) -> Tpm:
    """The TPM for `tcti` (arg > $TPMTLS_TCTI > $TPM2TOOLS_TCTI > device:/dev/tpmrm0).

    Uses the process-wide pool for that TCTI unless you pass your own. Connecting is
    lazy: the first operation opens the TPM, and fails then with TpmUnavailable.
    """
    return Tpm(pool if pool is not None else default_pool(tcti))


__all__ = ["Tpm", "TpmInfo", "connect"]
