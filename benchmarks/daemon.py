"""`python -m benchmarks daemon`: Docker API calls per second through `tpmtls.docker_client`
with the TPM key vs a software key, and new-connection latency through `tpmtls daemon-proxy`
with and without TLS session resumption, against one real `dockerd --tlsverify` in one run."""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from tpmtls.testing import TpmTiming

from .lab import Lab, environment


class _TlsDockerd:
    """dockerd with the daemon.json `tpmtls certs daemon-config` writes, private roots, loopback only."""

    def __init__(self, work: Path, lab: Lab, stack: ExitStack) -> None:
        from tpmtls.docker.config import daemon_config
        from tpmtls.testing import free_port

        self.port = free_port()
        self.run = Path(tempfile.mkdtemp(prefix="tpb-", dir="/tmp"))  # short: unix socket paths
        stack.callback(shutil.rmtree, self.run, True)
        cfg = daemon_config(str(lab.server_cert), str(lab.server_key), str(lab.ca.cert_path),
                            [f"tcp://127.0.0.1:{self.port}"], str(self.run / "docker.sock"))
        (work / "daemon.json").write_text(cfg.daemon_json)
        log = open(work / "dockerd.log", "wb")
        stack.callback(log.close)
        self.proc = subprocess.Popen(
            ["dockerd", "--config-file", str(work / "daemon.json"), "--iptables=false", "--ip6tables=false",
             "--bridge=none", "--storage-driver=vfs", "--data-root", str(work / "docker-data"),
             "--exec-root", str(self.run / "exec"), "--pidfile", str(self.run / "docker.pid")],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        stack.callback(self.stop)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited: see {work / 'dockerd.log'}")
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(2)
                    s.connect(str(self.run / "docker.sock"))
                    s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
                    if b"OK" in s.recv(1024):
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("dockerd did not answer within 60 s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _cert_path(lab: Lab, kind: str, work: Path) -> Path:
    cert, key = lab.client("ecc-p256", kind)
    d = work / f"certs-{kind}"
    d.mkdir()
    shutil.copy(lab.ca.cert_path, d / "ca.pem")
    shutil.copy(cert, d / "cert.pem")
    shutil.copy(key, d / "key.pem")
    return d


def _signatures(lab: Lab) -> int:
    from tpmtls.tpm.pool import default_pool

    return default_pool(lab.tpm.tcti).stats().signatures


def _api_calls(lab: Lab, port: int, cert_path: Path, threads: int, seconds: float) -> dict[str, Any]:
    """`version()` calls per second from `threads` threads sharing one docker_client."""
    from tpmtls.docker.client import docker_client

    sigs0 = _signatures(lab)
    client = docker_client(f"tcp://127.0.0.1:{port}", cert_path=cert_path, tls_verify=True, tcti=lab.tpm.tcti)
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def work() -> None:
        for _ in range(1_000_000):
            if time.monotonic() >= stop_at:
                return
            t0 = time.perf_counter()
            try:
                client.api.version(api_version=False)
            except Exception as e:  # noqa: BLE001 - counted and shown
                with lock:
                    errors.append(str(e)[:200])
                continue
            with lock:
                latencies.append(time.perf_counter() - t0)

    started = time.monotonic()
    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(seconds + 60)
    elapsed = time.monotonic() - started
    client.close()
    return {"threads": threads, "calls": len(latencies), "calls_per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": _ms(latencies, 50), "p99_ms": _ms(latencies, 99), "errors": len(errors),
            "error_samples": errors[:3], "tpm_signatures": _signatures(lab) - sigs0}


def _ms(values: list[float], pct: int) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))] * 1000, 2)


def _proxy_latency(lab: Lab, port: int, cert_path: Path, resume: bool, connections: int) -> dict[str, Any]:
    """New connections through daemon-proxy: connect, GET /_ping, read to the close."""
    from tpmtls.docker.files import CertPath
    from tpmtls.docker.proxy import DaemonProxy

    proxy = DaemonProxy(f"tcp://127.0.0.1:{port}", "tcp://127.0.0.1:0", CertPath(cert_path), tcti=lab.tpm.tcti,
                        resume=resume)
    proxy.probe()
    proxy.bind()
    host, pport = proxy.bound[len("tcp://"):].rsplit(":", 1)
    server = threading.Thread(target=proxy.serve, daemon=True)
    server.start()
    sigs0 = _signatures(lab)
    latencies, errors = [], 0
    try:
        for _ in range(connections):
            t0 = time.perf_counter()
            try:
                with socket.create_connection((host, int(pport)), timeout=30) as s:
                    s.sendall(b"GET /_ping HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                    reply = b""
                    for _ in range(100):
                        chunk = s.recv(65536)
                        if not chunk:
                            break
                        reply += chunk
                ok = b" 200 " in reply and reply.endswith(b"OK")
            except OSError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1
    finally:
        proxy.stop()
        server.join(10)
    return {"resume": resume, "connections": connections, "p50_ms": _ms(latencies, 50), "p99_ms": _ms(latencies, 99),
            "mean_ms": round(statistics.mean(latencies) * 1000, 2) if latencies else None, "errors": errors,
            "tpm_signatures": _signatures(lab) - sigs0, "resumed": proxy.stats.resumed,
            "full_handshakes": proxy.stats.full_handshakes}


def daemon(args: argparse.Namespace) -> int:
    threads = [int(t) for t in args.threads.split(",") if t.strip()]
    api: list[dict[str, Any]] = []
    latency: list[dict[str, Any]] = []
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tpmtls-bench-daemon-")))
        lab = Lab(work, stack, TpmTiming.with_sign(args.tpm_latency) if args.tpm_latency else None)
        dockerd = _TlsDockerd(work, lab, stack)
        dirs = {kind: _cert_path(lab, kind, work) for kind in ("tpm", "software")}
        print(f"dockerd --tlsverify on 127.0.0.1:{dockerd.port}; client keys ECC P-256 (TPM: swtpm behind "
              "tpm2-abrmd)", flush=True)
        for n in threads:
            for kind in ("software", "tpm"):
                row = {"key": kind, **_api_calls(lab, dockerd.port, dirs[kind], n, args.seconds)}
                api.append(row)
                print(f"  docker_client {kind:8} key, {n:2} threads: {row['calls_per_s']:7.1f} calls/s  "
                      f"p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms  TPM signatures {row['tpm_signatures']}"
                      f"{'  errors ' + str(row['errors']) if row['errors'] else ''}", flush=True)
        for resume in (False, True):
            row = _proxy_latency(lab, dockerd.port, dirs["tpm"], resume, args.connections)
            latency.append(row)
            print(f"  daemon-proxy {'with' if resume else 'without'} resumption: new connection + /_ping "
                  f"p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms  TPM signatures {row['tpm_signatures']} "
                  f"for {row['connections']} connections{'  errors ' + str(row['errors']) if row['errors'] else ''}",
                  flush=True)
    print()
    print(f"{'docker_client key':18} {'threads':>7} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'TPM sigs':>8}")
    for r in api:
        print(f"{r['key']:18} {r['threads']:>7} {r['calls_per_s']:>9.1f} {str(r['p50_ms']):>8} {str(r['p99_ms']):>8} "
              f"{r['tpm_signatures']:>8}")
    print(f"{'daemon-proxy':18} {'conns':>7} {'p50 ms':>9} {'p99 ms':>8} {'TPM sigs':>8}")
    for r in latency:
        label = "resumed sessions" if r["resume"] else "full handshakes"
        print(f"{label:18} {r['connections']:>7} {str(r['p50_ms']):>9} {str(r['p99_ms']):>8} {r['tpm_signatures']:>8}")
    if args.json:
        Path(args.json).write_text(json.dumps({"env": environment(), "seconds": args.seconds, "api": api,
                                               "proxy": latency}, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    failed = any(r["errors"] for r in api + latency)
    return 1 if failed else 0


def register(sub: Any) -> None:
    p = sub.add_parser("daemon", help="docker_client calls/s (TPM vs software key), daemon-proxy latency "
                                      "with and without session resumption")
    p.add_argument("--threads", default="1,4")
    p.add_argument("--seconds", type=float, default=3.0, help="per docker_client point")
    p.add_argument("--connections", type=int, default=50, help="per daemon-proxy point")
    p.add_argument("--tpm-latency", type=float, default=0, metavar="MS",
                   help="TPM2_Sign takes MS milliseconds (hardware-paced forwarder); 0: swtpm speed")
    p.add_argument("--json", metavar="FILE")
    p.set_defaults(func=daemon)
