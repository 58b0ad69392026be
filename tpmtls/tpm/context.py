"""One open ESAPI context and the objects it keeps loaded (the SRK, keys), used by one thread at a time.

The pool (`pool.py`) owns contexts and lends them out; this module is what a borrower
holds: the connection, the owner-hierarchy SRK, and the keys loaded in it, keyed by a
stable key id. Opening a context, creating the SRK and loading a key cost tens of
milliseconds on swtpm and seconds on hardware (docs/tpm-device.md), so a context
keeps them for as long as it lives -- but few of them at once: a context stays within
MAX_OBJECTS transient objects, because the kernel's resource manager gives each open
/dev/tpmrm0 three slots and swaps *every* object of the file in and out around every
command (each one held costs a ContextLoad, ContextSave and FlushContext per command).
So keys are evicted least recently used first -- on the kernel's manager every key but
the one in use, since each one held costs three commands per command there -- and the SRK is flushed after each
operation: its saved context (TPM2_ContextSave, once) reloads it in one command when
another key must be loaded under it, instead of a CreatePrimary. Keys are saved the
same way once loaded, so an evicted key comes back with one TPM2_ContextLoad and no SRK.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

from tpm2_pytss import ESAPI, TSS2_Exception
from tpm2_pytss.constants import ESYS_TR, TPM2_CAP
from tpm2_pytss.types import TPM2B_DATA, TPM2B_PUBLIC, TPM2B_SENSITIVE_CREATE, TPML_PCR_SELECTION, TPMS_CONTEXT

from ..errors import KeyFileError
from . import rc, transport
from .keyfile import OWNER, KeyBlob
from .templates import SRK_ECC, SRK_RSA, same_template

SRK_PERSISTENT = 0x81000001  # TCG Provisioning Guidance: the SRK's persistent handle
_SRK_TEMPLATES = {"ecc": SRK_ECC, "rsa": SRK_RSA}
MAX_OBJECTS = 3  # transient objects per context: the kernel's per-file space, and a TPM's fewest slots
SWAPPED_OBJECTS = 1  # behind the kernel's manager, which swaps every object around every command: the key in use


class ContextOwner(Protocol):
    """What a context needs from the pool that owns it: a connection, counters, SRK memory."""

    def open_esapi(self, after_loss: bool) -> tuple[ESAPI, transport.StreamTcti | None]:
        """Connect to the TPM (after a loss: keep trying for a while)."""

    def count(self, **amounts: float) -> None:
        """Add to the pool's counters (primaries, key_loads …)."""

    def srk_order(self, key_id: str) -> tuple[str, ...]:
        """The SRK kinds to try for a key, the one that loaded it last time first."""

    def remember_srk(self, key_id: str, kind: str) -> None:
        """Which SRK kind loaded a key (so other contexts try it first)."""


class TpmContext:
    """One open ESAPI context and what it keeps loaded; used by one thread at a time."""

    def __init__(self, owner: ContextOwner, index: int, max_objects: int = MAX_OBJECTS) -> None:
        self.owner = owner
        self.index = index
        self.max_objects = max_objects  # transient objects kept between operations
        self._esapi: ESAPI | None = None
        self._transport: transport.StreamTcti | None = None
        self._srks: dict[str, tuple[ESYS_TR, TPM2B_PUBLIC]] = {}  # loaded SRKs
        self._saved_srks: dict[str, tuple[TPMS_CONTEXT, TPM2B_PUBLIC]] = {}  # flushed, reloadable in one command
        self._persistent_srk: bool | None = None
        self._keys: OrderedDict[str, ESYS_TR] = OrderedDict()
        self._saved_keys: dict[str, TPMS_CONTEXT] = {}  # evicted keys, reloadable in one command
        self.after_loss = False  # the next connect follows a lost one: wait for the TPM to return
        self.abandoned = False  # a command on it missed its deadline: never use it again

    @property
    def esapi(self) -> ESAPI:
        if self._esapi is None:
            self._esapi, self._transport = self.owner.open_esapi(self.after_loss)
        return self._esapi

    @property
    def is_open(self) -> bool:
        return self._esapi is not None

    @property
    def timed_out(self) -> transport.TransportTimeout | None:
        """The deadline a command of this context missed, if any."""
        return self._transport.timed_out if self._transport is not None else None

    @property
    def problem(self) -> str | None:
        """Why the transport last failed, in words (errno's meaning, the device …), if it said."""
        cause = self._transport.unavailable if self._transport is not None else None
        return cause.reason if cause is not None else None

    def close(self, flush: bool = False) -> None:
        """Drop the ESAPI context; a dead transport may make finalising fail, which is fine.

        `flush` first unloads our transient objects: needed on a direct TPM, where
        nothing else would ever free its three object slots.
        """
        esapi, self._esapi = self._esapi, None
        tcti, self._transport = self._transport, None
        transient = list(self._keys.values()) + [h for h, _ in self._srks.values()]
        self._srks.clear()
        self._saved_srks.clear()
        self._saved_keys.clear()
        self._keys.clear()
        self._persistent_srk = None
        if esapi is None:
            return
        try:
            if flush and (tcti is None or tcti.timed_out is None):
                for handle in transient:
                    if esapi.tr_get_tpm_handle(handle) >> 24 == 0x80:  # transient, not persistent
                        esapi.flush_context(handle)
        except Exception:  # noqa: BLE001 - best effort: the TPM may be gone
            pass
        try:
            esapi.close()
        except Exception:  # noqa: BLE001 - the context is being thrown away
            pass
        if tcti is not None:
            tcti.close()

    def has_handle(self, handle: int) -> bool:
        """True when `handle` (e.g. a persistent 0x81…) exists on the TPM."""
        _, data = self.esapi.get_capability(TPM2_CAP.HANDLES, handle, 1)
        handles = data.data.handles
        return handles.count > 0 and int(handles.handle[0]) == handle

    def srk(self, kind: str = "ecc") -> tuple[ESYS_TR, TPM2B_PUBLIC]:
        """The owner-hierarchy SRK for `kind` ('ecc' or 'rsa'), loaded once per context.

        A persistent key at 0x81000001 made from the same template is the same key
        (same template, same seed), so it is used instead of CreatePrimary when present.
        """
        if kind in self._srks:
            return self._srks[kind]
        esapi = self.esapi
        if kind in self._saved_srks:
            saved, public = self._saved_srks[kind]
            self._make_room(1)
            try:
                self._srks[kind] = (esapi.context_load(saved), public)
                return self._srks[kind]
            except TSS2_Exception as e:
                if rc.is_context_lost(e) or rc.is_retry(e) or rc.is_object_memory(e):
                    raise
                del self._saved_srks[kind]  # saved before a TPM reset: make it again
        template = _SRK_TEMPLATES[kind]
        if self._persistent_srk is None:
            self._persistent_srk = self.has_handle(SRK_PERSISTENT)
        if self._persistent_srk:
            handle = esapi.tr_from_tpmpublic(SRK_PERSISTENT)
            public, _, _ = esapi.read_public(handle)
            if same_template(public.publicArea, template):
                self._srks[kind] = (handle, public)
                return self._srks[kind]
            esapi.tr_close(handle)
        self._make_room(1)
        handle, public, _, _, _ = esapi.create_primary(
            TPM2B_SENSITIVE_CREATE(),
            TPM2B_PUBLIC(publicArea=template),
            ESYS_TR.RH_OWNER,
            TPM2B_DATA(),
            TPML_PCR_SELECTION(),
        )
        self.owner.count(primaries=1)
        self._srks[kind] = (handle, public)
        return self._srks[kind]

    def release_srks(self) -> None:
        """Flush the transient SRKs (after an operation): keys loaded under them no longer need them.

        The first time, its context is saved, so the next key load reloads it with one
        TPM2_ContextLoad. Persistent SRKs take no slot and stay.
        """
        for kind, (handle, public) in list(self._srks.items()):
            if not self._is_transient(handle):
                continue
            if kind not in self._saved_srks:
                self._saved_srks[kind] = (self.esapi.context_save(handle), public)
            del self._srks[kind]
            self.esapi.flush_context(handle)

    def _is_transient(self, handle: ESYS_TR) -> bool:
        return self.esapi.tr_get_tpm_handle(handle) >> 24 == 0x80  # ESYS-local: no TPM command

    def _transient(self) -> int:
        """How many transient objects this context holds (keys and SRKs; persistent ones take no slot)."""
        handles = list(self._keys.values()) + [h for h, _ in self._srks.values()]
        return sum(1 for h in handles if self._is_transient(h))

    def _make_room(self, needed: int) -> None:
        """Evict least recently used keys until `needed` more objects fit (in `max_objects`, or `needed` if more)."""
        limit = min(MAX_OBJECTS, max(self.max_objects, needed))
        for _ in range(len(self._keys)):
            if self._transient() + needed <= limit:
                return
            self.evict_key()

    def key(self, blob: KeyBlob, auth: bytes | None = None) -> ESYS_TR:
        """The ESYS handle of `blob`, loading it on first use in this context."""
        handle = self._keys.get(blob.key_id)
        if handle is None:
            handle = self._reload(blob.key_id) or self._load(blob)
            self._keys[blob.key_id] = handle
            self.owner.count(key_loads=1)
        else:
            self._keys.move_to_end(blob.key_id)
        # Local to ESYS (no TPM command): set every time so a retry with another
        # password, or a second key object for the same key, uses its own.
        self.esapi.tr_set_auth(handle, auth or b"")
        return handle

    def _reload(self, key_id: str) -> ESYS_TR | None:
        """An evicted key from its saved context (one command, no parent), or None."""
        saved = self._saved_keys.get(key_id)
        if saved is None:
            return None
        self._make_room(1)
        try:
            return self.esapi.context_load(saved)
        except TSS2_Exception as e:
            if rc.is_context_lost(e) or rc.is_retry(e) or rc.is_object_memory(e):
                raise
            del self._saved_keys[key_id]  # saved before a TPM reset: load it under its parent again
            return None

    def _load(self, blob: KeyBlob) -> ESYS_TR:
        esapi = self.esapi
        if blob.is_persistent:
            assert blob.handle is not None
            if not self.has_handle(blob.handle):
                raise KeyFileError(f"{blob.source}: no key at persistent handle 0x{blob.handle:08x} on this TPM")
            handle = esapi.tr_from_tpmpublic(blob.handle)
            if blob.name and bytes(esapi.tr_get_name(handle)) != blob.name:
                raise KeyFileError(
                    f"{blob.source}: the key at 0x{blob.handle:08x} is not the one this file was made for "
                    "(TPM name differs); re-run 'tpmtls key persist'"
                )
            return handle
        if blob.parent != OWNER:
            parent = esapi.tr_from_tpmpublic(blob.parent)
            self._make_room(1)
            return self._load_under(parent, blob)
        last: TSS2_Exception | None = None
        for kind in self.owner.srk_order(blob.key_id):
            try:
                self._make_room(1 if kind in self._srks else 2)  # the SRK (unless loaded) and the key
                parent, _ = self.srk(kind)
                handle = self._load_under(parent, blob)
            except TSS2_Exception as e:
                # Full object slots (a direct TPM has about three) are not "another TPM's
                # key": let the caller evict a key and load again.
                if rc.is_context_lost(e) or rc.is_retry(e) or rc.is_object_memory(e):
                    raise
                last = e
                continue
            self.owner.remember_srk(blob.key_id, kind)
            return handle
        raise KeyFileError(
            f"{blob.source}: this TPM's owner-hierarchy SRK (parent 0x{OWNER:08x}) cannot load the key: "
            f"it was made for a different TPM or parent ({rc.describe(last) if last else 'no SRK'})"
        )

    def _load_under(self, parent: ESYS_TR, blob: KeyBlob) -> ESYS_TR:
        handle = self.esapi.load(parent, blob.private, blob.public)
        self._saved_keys[blob.key_id] = self.esapi.context_save(handle)
        return handle

    def evict_key(self) -> bool:
        """Flush the least recently used transient key this context keeps (never its SRKs).

        Direct TPMs have about three object slots: SRK, a key or two, and whatever a
        command needs for itself (TPM2_Create, TPM2_Load). Keys reload on next use.
        False when there was no key to flush.
        """
        for key_id, handle in self._keys.items():
            if self._is_transient(handle):
                del self._keys[key_id]
                self.esapi.flush_context(handle)
                return True
        return False


def flush_orphans(esapi: ESAPI) -> None:
    """Flush every transient object on a direct TPM (like `tpm2_flushcontext -t`).

    Without a resource manager the TPM takes one client at a time, so objects present
    when we connect were left by a client that is gone, and they fill its few slots.
    """
    _, data = esapi.get_capability(TPM2_CAP.HANDLES, 0x80000000, 64)
    for handle in list(data.data.handles)[: data.data.handles.count]:
        esapi.flush_context(esapi.tr_from_tpmpublic(int(handle)))
