"""`tpmtls doctor`: is the TPM reachable and working, and which versions are in play."""

from __future__ import annotations

import argparse
import ssl
import sys
import time
from importlib.metadata import PackageNotFoundError, version

from cryptography.hazmat.backends.openssl import backend
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from .._version import __version__
from ..errors import TpmtlsError
from ..provider import in_cryptography, load_into_system_ssl
from ..provider import state as provider_state
from ..tpm import connect
from ..tpm.keys import TpmECPrivateKey
from ..tpm.tcti import tcti_source
from ._common import add_tcti, say


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("doctor", help="check the TPM, the pool and library versions")
    add_tcti(p)
    p.set_defaults(func=run)


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def _report_provider() -> bool:
    """One line per OpenSSL: does it have the shim? True when something is wrong."""
    state = provider_state
    if state.problem:
        say(f"provider: FAILED: {state.problem}")
        return True
    say(f"provider: {state.path}")
    if in_cryptography():
        say(f"provider in cryptography's {backend.openssl_version_text()}: loaded (pyOpenSSL can use TPM keys)")
    else:
        why = "cryptography was imported before tpmtls" if state.cryptography_first else "not loaded"
        say(f"provider in cryptography's {backend.openssl_version_text()}: NO: {why}")
    try:
        load_into_system_ssl()
        say(f"provider in system {ssl.OPENSSL_VERSION}: loaded (stdlib ssl, requests, docker-py can use TPM keys)")
    except TpmtlsError as e:
        say(f"provider in system {ssl.OPENSSL_VERSION}: FAILED: {e}")
        return True
    return not in_cryptography()


def run(args: argparse.Namespace) -> int:
    say(f"tpmtls {__version__}")
    say(f"tpm2-pytss {_version('tpm2-pytss')}; cryptography {_version('cryptography')} "
        f"({backend.openssl_version_text()}); pyOpenSSL {_version('pyOpenSSL')}")
    say(f"stdlib ssl: {ssl.OPENSSL_VERSION}")
    failed = _report_provider()
    tpm = connect(args.tcti)
    say(f"TCTI: {tpm.tcti} (from {tcti_source(args.tcti)}); pool size {tpm.pool.size}")
    try:
        info = tpm.info()
        algs = ", ".join(a for a, ok in (("ECC", info.has_ecc), ("RSA", info.has_rsa)) if ok)
        say(f"TPM: ok: {info.manufacturer} '{info.vendor}', firmware {info.firmware}, TPM {info.spec}; {algs}")
        t0 = time.perf_counter()
        key = tpm.create_key("ecc-p256")
        assert isinstance(key, TpmECPrivateKey)
        created = time.perf_counter() - t0
        t0 = time.perf_counter()
        sig = key.sign(b"tpmtls doctor", ec.ECDSA(hashes.SHA256()))
        signed = time.perf_counter() - t0
        key.public_key().verify(sig, b"tpmtls doctor", ec.ECDSA(hashes.SHA256()))
        say(f"keys: ok: created an ECC P-256 key in {created * 1000:.1f} ms, signed and verified in {signed * 1000:.1f} ms")
    except TpmtlsError as e:
        say("TPM: FAILED (see below)")
        print(f"tpmtls: doctor: {e}", file=sys.stderr)
        failed = True
    stats = tpm.pool.stats()
    say(f"pool: {stats.contexts_open} of {stats.size} contexts open, {stats.signatures} signatures, "
        f"{stats.errors} errors, {stats.rebuilds} rebuilds")
    return 1 if failed else 0
