"""One benchmark point in a fresh process: `python -m benchmarks._worker '<json>'` → one JSON line.

A process per point because the modes reconfigure OpenSSL process-wide (tpm2-openssl's
default properties, tpmtls's shim), and so that nothing one mode loaded helps another.
Modes: software, tpmtls, open-per-sign, tpm2-openssl (TLS handshakes) and raw-sign.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from typing import Any, Callable

REQUEST = b"GET / HTTP/1.0\r\n\r\n"
# tpm2-openssl in its best configuration: docs/facts-openssl.md, "tpm2-openssl 1.1.1"
TPM2_PROPERTIES = "?provider=tpm2,tpm2.digest!=yes,tpm2.rand!=yes,tpm2.cipher!=yes"


def _tpm2_openssl_for_cryptography() -> None:
    """tpm2-openssl into cryptography's OpenSSL, best configuration, before it is imported."""
    from pathlib import Path

    # cryptography's OpenSSL has its own module directory: name Debian's tpm2.so by path
    module = next(Path("/usr/lib").glob("*/ossl-modules/tpm2.so"), None)
    if module is None:
        raise RuntimeError("tpm2-openssl's tpm2.so is not installed (Debian package tpm2-openssl)")
    conf = tempfile.NamedTemporaryFile("w", suffix=".cnf", delete=False)
    conf.write("openssl_conf = init\n[init]\nproviders = prov\nalg_section = algs\n"
               f"[prov]\ntpm2 = tpm2_sect\ndefault = default_sect\n[tpm2_sect]\nmodule = {module}\nactivate = 1\n"
               f"[default_sect]\nactivate = 1\n[algs]\ndefault_properties = {TPM2_PROPERTIES}\n")
    conf.close()
    os.environ["OPENSSL_CONF"] = conf.name
    import cryptography.hazmat.bindings._rust  # noqa: F401 - reads the config now

    del os.environ["OPENSSL_CONF"]


def _tpm2_openssl_for_ssl() -> None:
    """tpm2-openssl into the system OpenSSL (stdlib ssl) with the same properties."""
    import _ssl  # noqa: F401 - map the stdlib's libcrypto first
    import ctypes

    lib = ctypes.CDLL("libcrypto.so.3")
    lib.OSSL_PROVIDER_load.restype = ctypes.c_void_p
    lib.OSSL_PROVIDER_load.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.EVP_set_default_properties.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    for name in (b"default", b"tpm2"):
        if not lib.OSSL_PROVIDER_load(None, name):
            raise RuntimeError(f"cannot load the {name.decode()} provider into the system OpenSSL")
    if lib.EVP_set_default_properties(None, TPM2_PROPERTIES.encode()) != 1:
        raise RuntimeError("EVP_set_default_properties failed")


def make_connector(cfg: dict[str, Any]) -> Callable[[Any], Any]:
    """A function doing one handshake + request (given the previous session); returns the new session."""
    mode, path = cfg["mode"], cfg["path"]
    cert, key, ca, port = cfg["cert"], cfg["key"], cfg["ca"], cfg["port"]
    version = cfg["tls"]
    if mode == "tpm2-openssl":
        (_tpm2_openssl_for_cryptography if path == "pyopenssl" else _tpm2_openssl_for_ssl)()
    if mode in ("tpmtls", "open-per-sign"):
        import tpmtls
        from tpmtls.lab.open_per_sign import OpenPerSignPool

        pool = (OpenPerSignPool if mode == "open-per-sign" else tpmtls.Pool)(cfg["tcti"])
        cfg["_pool"] = pool
    if path == "stdlib":
        import ssl

        if mode in ("tpmtls", "open-per-sign"):
            ctx = tpmtls.ssl_context(cert, key, ca, tls_version=version, pool=pool,
                                     resume=False)  # the worker resumes by hand (--resume): it measures both
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.load_verify_locations(ca)
            ctx.minimum_version = ctx.maximum_version = {"1.2": ssl.TLSVersion.TLSv1_2,
                                                         "1.3": ssl.TLSVersion.TLSv1_3}[version]
            ctx.load_cert_chain(cert, key)

        def once(session: Any) -> Any:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
                with ctx.wrap_socket(raw, server_hostname="localhost",
                                     session=session if cfg["resume"] else None) as tls:
                    tls.sendall(REQUEST)
                    while tls.recv(65536):
                        pass
                    return tls.session

        return once
    from OpenSSL import SSL

    if mode in ("tpmtls", "open-per-sign"):
        pctx = tpmtls.pyopenssl_context(cert, key, ca, hostname="localhost", tls_version=version, pool=pool,
                                        resume=False)
    else:
        pctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        v = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}[version]
        pctx.set_min_proto_version(v)
        pctx.set_max_proto_version(v)
        pctx.load_verify_locations(ca)
        pctx.set_verify(SSL.VERIFY_PEER)
        pctx.use_certificate_chain_file(cert)
        pctx.use_privatekey_file(key)

    def once_py(session: Any) -> Any:
        raw = socket.create_connection(("127.0.0.1", port), timeout=30)
        raw.settimeout(None)
        conn = SSL.Connection(pctx, raw)
        conn.set_tlsext_host_name(b"localhost")
        if session is not None and cfg["resume"]:
            conn.set_session(session)
        conn.set_connect_state()
        try:
            conn.do_handshake()
            conn.sendall(REQUEST)
            while True:
                try:
                    if not conn.recv(65536):
                        break
                except (SSL.ZeroReturnError, SSL.SysCallError):
                    break
            session = conn.get_session()
            try:
                conn.shutdown()  # close_notify: OpenSSL marks sessions of unclean ends not resumable
            except SSL.Error:
                pass
            return session
        finally:
            conn.close()
            raw.close()

    return once_py


def warm_up(once: Callable[[Any], Any], threads: int) -> None:
    """A handshake on each thread at once (contexts opened, SRK made, key loaded), then wait for the parent's go."""

    def one() -> None:
        try:
            once(None)
        except Exception:  # noqa: BLE001 - the timed part counts failures
            pass

    ts = [threading.Thread(target=one) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    print("warm", flush=True)
    sys.stdin.readline()


def run_handshakes(cfg: dict[str, Any]) -> dict[str, Any]:
    once = make_connector(cfg)
    if cfg.get("warm_up"):
        warm_up(once, cfg["threads"])
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = time.monotonic()
    end = start + cfg["seconds"]

    def worker() -> None:
        session = None
        while time.monotonic() < end:
            t0 = time.perf_counter()
            try:
                session = once(session)
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)
            except Exception as e:  # noqa: BLE001 - a failed handshake is a data point
                with lock:
                    errors.append(f"{type(e).__name__}: {e}"[:160])
                session = None

    before = cfg["_pool"].stats() if "_pool" in cfg else None
    threads = [threading.Thread(target=worker) for _ in range(cfg["threads"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    result = _summary(latencies, elapsed)
    result["errors"] = len(errors)
    result["error_samples"] = sorted(set(errors))[:3]
    if before is not None:
        after = cfg["_pool"].stats()
        result["tpm_signatures"] = after.signatures + after.decryptions - before.signatures - before.decryptions
    return result


def run_raw_sign(cfg: dict[str, Any]) -> dict[str, Any]:
    """TPM2_Sign with tpm2-pytss alone: a context per thread, the key loaded once, nothing else."""
    import hashlib

    from tpm2_pytss import ESAPI
    from tpm2_pytss.constants import TPM2_ALG
    from tpm2_pytss.tsskey import TSSPrivKey
    from tpm2_pytss.types import TPMT_SIG_SCHEME

    tss = TSSPrivKey.from_pem(open(cfg["key"], "rb").read())
    alg = TPM2_ALG.ECDSA if tss.public.publicArea.type == TPM2_ALG.ECC else TPM2_ALG.RSASSA
    digest = hashlib.sha256(b"benchmark").digest()
    latencies: list[float] = []
    lock = threading.Lock()
    end = time.monotonic() + cfg["seconds"]

    def worker() -> None:
        esapi = ESAPI(cfg["tcti"])
        handle = tss.load(esapi)
        scheme = TPMT_SIG_SCHEME(scheme=alg)
        scheme.details.any.hashAlg = TPM2_ALG.SHA256
        try:
            while time.monotonic() < end:
                t0 = time.perf_counter()
                esapi.sign(handle, digest, scheme)
                with lock:
                    latencies.append(time.perf_counter() - t0)
        finally:
            esapi.flush_context(handle)
            esapi.close()

    start = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(cfg["threads"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {**_summary(latencies, time.monotonic() - start), "errors": 0}


def _summary(latencies: list[float], elapsed: float) -> dict[str, Any]:
    lat = sorted(latencies)
    pick = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000) if lat else (lambda q: None)
    return {"count": len(lat), "seconds": round(elapsed, 3), "per_s": round(len(lat) / elapsed, 1) if elapsed else 0,
            "p50_ms": round(pick(0.50), 2) if lat else None, "p99_ms": round(pick(0.99), 2) if lat else None,
            "mean_ms": round(statistics.fmean(lat) * 1000, 2) if lat else None}


def main() -> None:
    cfg = json.loads(sys.argv[1])
    result = run_raw_sign(cfg) if cfg["mode"] == "raw-sign" else run_handshakes(cfg)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
