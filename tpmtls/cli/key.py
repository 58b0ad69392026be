"""`tpmtls key create|import|show|persist|wrap|import-wrapped|ek`: TPM keys, and moving a key
to exactly one TPM (wrapped to its EK: docs/key-transfer.md)."""

from __future__ import annotations

import argparse

from tpm2_pytss.constants import TPMA_OBJECT

from .._files import OutputError, check_writable, read_input, write_atomic
from ..errors import KeyFileError
from ..tpm import connect
from ..tpm.ek_file import UNVERIFIED
from ..tpm.keyfile import OWNER, read_key_reference
from ..tpm.keys import TpmKey
from ..tpm.templates import ALGORITHMS, algorithm_name
from ..tpm.transfer import EK_TYPES, import_wrapped, read_ek, read_file, wrap_key
from ._common import add_format, add_password_file, add_tcti, emit, read_secret_file, say


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`tpmtls key` and its subcommands."""
    key = sub.add_parser("key", help="create, import, inspect, persist and transfer TPM keys")
    ksub = key.add_subparsers(dest="key_command", required=True)

    p = ksub.add_parser("create", help="create a key inside the TPM and write its TSS2 key file")
    p.add_argument("--alg", choices=ALGORITHMS, default="ecc-p256", help="key algorithm (default ecc-p256)")
    p.add_argument("--out", required=True, metavar="FILE", help="TSS2 PRIVATE KEY file to write")
    p.add_argument("--force", action="store_true", help="replace FILE if it exists")
    add_password_file(p, "file holding a password to set on the key (makes it DA-protected)")
    add_tcti(p)
    p.set_defaults(func=create)

    p = ksub.add_parser("import", help="move an external RSA/EC PEM key into the TPM")
    p.add_argument("pem", metavar="PEM", help="the software private key (PEM); tpmtls never writes it anywhere")
    p.add_argument("--out", required=True, metavar="FILE", help="TSS2 PRIVATE KEY file to write")
    p.add_argument("--force", action="store_true", help="replace FILE if it exists")
    p.add_argument("--pem-password-file", metavar="F", help="file holding the PEM's password, if encrypted")
    add_password_file(p, "file holding a password to set on the imported key")
    add_tcti(p)
    p.set_defaults(func=import_)

    p = ksub.add_parser("show", help="algorithm, parent and attributes of a key file")
    p.add_argument("key", metavar="FILE", help="key file or handle:0x81…")
    p.add_argument("--pubout", action="store_true", help="print only the public key (PEM)")
    add_tcti(p)
    add_format(p)
    p.set_defaults(func=show)

    p = ksub.add_parser("persist", help="make a key persistent at a handle (TPM2_EvictControl)")
    p.add_argument("key", metavar="FILE", help="TSS2 key file")
    p.add_argument("handle", metavar="0x81xxxxxx", help="owner persistent handle, 0x81000000..0x817fffff")
    p.add_argument("--out", metavar="FILE", help="also write the handle form of the key (a small PEM)")
    p.add_argument("--force", action="store_true", help="replace --out FILE if it exists")
    add_password_file(p)
    add_tcti(p)
    p.set_defaults(func=persist)

    p = ksub.add_parser("wrap", help="owner side, no TPM: wrap a PEM key so only the TPM with this EK can import it")
    p.add_argument("pem", metavar="PEM", help="the software private key (PEM)")
    p.add_argument("--ek", required=True, metavar="EKCERT.pem",
                   help="the machine's EK certificate (with its public key: 'tpmtls key ek' there writes both)")
    p.add_argument("--ek-roots", metavar="BUNDLE",
                   help="PEM bundle of the TPM makers' CAs you trust: the EK certificate must chain to one")
    p.add_argument("--ek-unverified", action="store_true",
                   help="take --ek as a plain public key, unchecked: nothing then shows that it belongs to a TPM, "
                        "and whoever made the file may unwrap the key in software")
    p.add_argument("--out", required=True, metavar="BLOB", help="wrapped key to write (safe to send: only that TPM opens it)")
    p.add_argument("--force", action="store_true", help="replace BLOB if it exists")
    p.add_argument("--pem-password-file", metavar="F", help="file holding the PEM's password, if encrypted")
    p.set_defaults(func=wrap)

    p = ksub.add_parser("import-wrapped", help="machine side: import a wrapped key into this TPM, write its key file")
    p.add_argument("blob", metavar="BLOB", help="output of 'tpmtls key wrap'")
    p.add_argument("--out", required=True, metavar="FILE", help="TSS2 PRIVATE KEY file to write")
    p.add_argument("--force", action="store_true", help="replace FILE if it exists")
    add_tcti(p)
    p.set_defaults(func=import_blob)

    p = ksub.add_parser("ek", help="write this TPM's endorsement key public (and its certificate, if any)")
    p.add_argument("--out", required=True, metavar="EK.pem", help="PEM file to write")
    p.add_argument("--type", choices=sorted(EK_TYPES), default="rsa", help="EK algorithm (default rsa: RSA-2048)")
    p.add_argument("--force", action="store_true", help="replace EK.pem if it exists")
    add_format(p)
    add_tcti(p)
    p.set_defaults(func=ek)


def create(args: argparse.Namespace) -> int:
    check_writable(args.out, args.force, inputs=(args.password_file,))
    password = read_secret_file(args.password_file)
    key = connect(args.tcti).create_key(args.alg, args.out, password, overwrite=args.force)
    say(f"created {key.algorithm} key in the TPM; key file {args.out} (TSS2 PRIVATE KEY, parent 0x{OWNER:08x})")
    return 0


def import_(args: argparse.Namespace) -> int:
    check_writable(args.out, args.force, inputs=(args.pem, args.pem_password_file, args.password_file))
    pem = read_input(args.pem, "PEM key", error=KeyFileError)
    key = connect(args.tcti).import_key(
        pem,
        args.out,
        read_secret_file(args.password_file),
        pem_password=read_secret_file(args.pem_password_file),
        overwrite=args.force,
        source=str(args.pem),
    )
    say(f"imported {key.algorithm} key into the TPM; key file {args.out}; "
        f"{args.pem} is no longer needed: delete it (tpmtls did not copy it anywhere)")
    return 0


def _evict(persisted: TpmKey) -> None:
    """Remove a persistent key this command just made (TPM2_EvictControl on its handle)."""
    from tpm2_pytss.constants import ESYS_TR

    handle = int(str(persisted.reference).split(":", 1)[1], 16)
    pool = persisted.pool
    pool.run("evict", lambda ctx: ctx.esapi.evict_control(ESYS_TR.RH_OWNER, ctx.esapi.tr_from_tpmpublic(handle),
                                                          handle))


def show(args: argparse.Namespace) -> int:
    blob = read_key_reference(args.key)
    if blob.is_persistent:
        key = connect(args.tcti).load_key(args.key)
        public = key.tpm_public
    else:
        assert blob.public is not None
        public = blob.public
    if args.pubout:
        print(public.to_pem().decode(), end="")
        return 0
    area = public.publicArea
    attrs = TPMA_OBJECT(area.objectAttributes)
    created = bool(attrs & TPMA_OBJECT.SENSITIVEDATAORIGIN)
    fixed = bool(attrs & TPMA_OBJECT.FIXEDTPM)
    data = {"key": blob.source, "form": "handle" if blob.is_persistent else "tss2-private-key",
            "handle": blob.handle, "parent": None if blob.is_persistent else blob.parent,
            "password": None if blob.is_persistent else not blob.empty_auth, "algorithm": algorithm_name(area),
            "attributes": str(attrs).split("|") if str(attrs) else [], "origin": "tpm" if created else "imported",
            "fixed_tpm": fixed, "name": bytes(public.get_name()).hex(), "public_key": public.to_pem().decode()}

    def lines() -> list[str]:
        shown = []
        if blob.is_persistent:
            shown.append(f"key: {blob.source} (persistent handle 0x{blob.handle:08x})")
        else:
            parent = "owner-hierarchy SRK" if blob.parent == OWNER else "persistent parent"
            shown += [f"key: {blob.source} (TSS2 PRIVATE KEY, loadable)", f"parent: 0x{blob.parent:08x} ({parent})",
                      f"password: {'no' if blob.empty_auth else 'yes'}"]
        shown += [f"algorithm: {algorithm_name(area)}", f"attributes: {attrs}",
                  f"origin: {'created in the TPM' if created else 'imported'}; "
                  f"{'cannot leave this TPM' if fixed else 'not fixedTPM'}",
                  f"name: {bytes(public.get_name()).hex()}"]
        return shown

    emit(args, data, lines)
    return 0


def persist(args: argparse.Namespace) -> int:
    if args.out:
        check_writable(args.out, args.force, inputs=(args.key, args.password_file))  # before the TPM changes
    key = connect(args.tcti).load_key(args.key, read_secret_file(args.password_file))
    persisted = key.persist(args.handle)
    if args.out:
        try:
            write_atomic(args.out, persisted.to_pem(), 0o644, keep=True)
        except OutputError as e:  # e.g. a full disk: undo, so the same command can be run again
            _evict(persisted)
            raise OutputError(f"{e}; the key was not left at {persisted.reference}") from None
    where = f"; handle key file {args.out}" if args.out else ""
    say(f"persisted {args.key} at {persisted.reference}{where}")
    return 0


def wrap(args: argparse.Namespace) -> int:
    from ..tpm.ek_file import ek_target

    out = check_writable(args.out, args.force, inputs=(args.pem, args.ek, args.ek_roots))
    pem = read_file(args.pem, "private key")
    roots = read_file(args.ek_roots, "EK roots bundle") if args.ek_roots else None
    target = ek_target(read_file(args.ek, "EK certificate"), roots, unverified=args.ek_unverified, source=args.ek,
                       roots_source=args.ek_roots or "--ek-roots")
    blob = wrap_key(pem, target, pem_password=read_secret_file(args.pem_password_file), source=args.pem)
    write_atomic(out, blob, 0o644)
    if target.verified is None:
        say(f"wrapped {args.pem} for the EK public key in {args.ek}, unverified: {UNVERIFIED}; blob {out}; "
            f"{args.pem} is still a clear key: keep it safe or delete it")
    else:
        say(f"wrapped {args.pem} for {target.describe()}; blob {out} (only the TPM holding that EK can import it); "
            f"{args.pem} is still a clear key: keep it safe or delete it")
    return 0


def import_blob(args: argparse.Namespace) -> int:
    check_writable(args.out, args.force)
    key = import_wrapped(connect(args.tcti), read_file(args.blob, "wrapped key"), args.out,
                         source=args.blob, overwrite=args.force)
    say(f"imported {key.algorithm} key into the TPM; key file {args.out} (TSS2 PRIVATE KEY, parent 0x{OWNER:08x})")
    return 0


def ek(args: argparse.Namespace) -> int:
    out = check_writable(args.out, args.force)
    info = read_ek(connect(args.tcti), args.type)
    write_atomic(out, info.to_pem(), 0o644)
    cert = "with its certificate" if info.certificate else "no EK certificate in this TPM's NV"
    emit(args, {"ek_type": info.ek_type, "out": str(out), "certificate": bool(info.certificate),
                "name": info.name.hex(), "public_key": info.public.to_pem().decode()},
         [f"{info.ek_type} public key written to {out} ({cert}); name {info.name.hex()}"])
    return 0


__all__ = ["add_parser"]
