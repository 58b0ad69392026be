"""`python -m benchmarks proxy`: `docker pull` of a multi-layer image through `tpmtls proxy`
(TPM key, mTLS registry) vs `docker pull` straight from a plain-HTTP loopback registry (the
ceiling: the same dockerd with no TLS and no proxy) vs `skopeo copy` with a software key,
in one run, with the upstream TLS handshakes and TPM signatures each proxied pull cost."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from .lab import Lab, environment


def _run(argv: list[str], env: dict[str, str], timeout: float = 900) -> float:
    started = time.monotonic()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:3])} failed: {proc.stderr.strip()[-400:]}")
    return time.monotonic() - started


class _PlainRegistry:
    """`docker-registry serve` on loopback without TLS: what dockerd pulls from fastest."""

    def __init__(self, work: Path, stack: ExitStack) -> None:
        from tpmtls.testing import free_port

        self.port = free_port()
        work.mkdir(parents=True)
        config = work / "config.yml"
        config.write_text("\n".join([
            "version: 0.1", "log:", "  level: warn", "  accesslog:", "    disabled: true",
            "storage:", "  filesystem:", f"    rootdirectory: {work / 'data'}",
            "http:", f"  addr: 127.0.0.1:{self.port}", ""]))
        log = open(work / "registry.log", "wb")
        stack.callback(log.close)
        self.proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        stack.callback(self.stop)
        _wait_port(self.port, self.proc, "docker-registry")

    def stop(self) -> None:
        _stop(self.proc)


class _Proxy:
    """`python -m tpmtls proxy` as its own process (its RSS and CPU are its own)."""

    def __init__(self, work: Path, env: dict[str, str], upstream: str, cert_dir: Path, stack: ExitStack) -> None:
        from tpmtls.testing import free_port

        self.port = free_port()
        self.log = work / "proxy.log"
        out = open(self.log, "wb")
        stack.callback(out.close)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tpmtls", "proxy", "--upstream", upstream, "--listen", f"127.0.0.1:{self.port}",
             "--cert-dir", str(cert_dir)], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True, cwd=Path(__file__).resolve().parent.parent)
        stack.callback(self.stop)
        _wait_port(self.port, self.proc, "tpmtls proxy")

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_tpmtls/status", timeout=10) as r:  # noqa: S310
            return dict(json.loads(r.read()))

    def stop(self) -> None:
        _stop(self.proc)


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    import socket

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited at start")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not listen within 60 s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def proxy(args: Any) -> int:
    from tpmtls.lab import Dockerd, Registry
    from tpmtls.testing import TpmTiming

    from .content import random_image

    timing = TpmTiming.with_sign(args.tpm_latency) if args.tpm_latency else None
    rows: list[dict[str, Any]] = []
    with ExitStack() as stack:
        import tempfile

        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tpmtls-bench-")))
        lab = Lab(work, stack, timing)
        dirs = {}
        for kind in ("tpm", "software"):
            cert, key = lab.client("ecc-p256", kind)
            d = dirs[kind] = work / f"certs-{kind}"
            d.mkdir()
            shutil.copy(lab.ca.cert_path, d / "ca.crt")
            shutil.copy(cert, d / "client.cert")
            shutil.copy(key, d / "client.key")
        image, size = random_image(work / "image.tar", args.size_mb, args.layers)
        mb = size / 1e6
        env = {k: v for k, v in os.environ.items() if k != "OPENSSL_CONF"}
        mtls = stack.enter_context(Registry(lab.server_cert, lab.server_key, lab.ca.cert_path, work / "mtls"))
        plain = _PlainRegistry(work / "plain", stack)
        upstream = f"localhost:{mtls.port}"
        _run(["skopeo", "copy", "--insecure-policy", "--dest-cert-dir", str(dirs["software"]),
              f"docker-archive:{image}", f"docker://{upstream}/bench:1"], env)
        _run(["skopeo", "copy", "--insecure-policy", "--dest-tls-verify=false", f"docker-archive:{image}",
              f"docker://127.0.0.1:{plain.port}/bench:1"], env)
        daemon = stack.enter_context(Dockerd(work / "dockerd"))
        denv = {**env, **daemon.env}
        proxy_env = {**lab.worker_env()}
        prox = _Proxy(work, proxy_env, upstream, dirs["tpm"], stack)
        print(f"image: {mb:.0f} MB in {args.layers} random layers; {args.rounds} cold pulls each; "
              f"TPM: {'TPM2_Sign %g ms' % args.tpm_latency if timing else 'swtpm speed'}", flush=True)
        targets = {"docker pull, plain registry (ceiling)": f"127.0.0.1:{plain.port}/bench:1",
                   "docker pull via tpmtls proxy (TPM key)": f"127.0.0.1:{prox.port}/bench:1"}
        times: dict[str, list[float]] = {name: [] for name in [*targets, "skopeo copy (software key)"]}
        per_pull: list[dict[str, int]] = []
        for r in range(args.rounds):
            for name, ref in targets.items():
                before = prox.status() if "proxy" in name else None
                times[name].append(_run(["docker", "pull", ref], denv))
                if before is not None:
                    after = prox.status()
                    per_pull.append({k: after[k] - before[k] for k in ("upstream_handshakes", "full_handshakes",
                                                                        "tpm_signatures", "requests")})
                _run(["docker", "rmi", ref], denv)  # the next pull is cold again
            dest = work / f"skopeo-{r}"
            times["skopeo copy (software key)"].append(_run(
                ["skopeo", "copy", "--insecure-policy", "--src-cert-dir", str(dirs["software"]),
                 f"docker://{upstream}/bench:1", f"dir:{dest}"], env))
            shutil.rmtree(dest, ignore_errors=True)
        final = prox.status()
    for name, values in times.items():
        median = statistics.median(values)
        rows.append({"client": name, "seconds": [round(v, 2) for v in values], "median_s": round(median, 2),
                     "mb_per_s": round(mb / median, 1)})
    ceiling = rows[0]["median_s"]
    print()
    print("| client | median s | MB/s | x ceiling |")
    print("|---|---:|---:|---:|")
    for row in rows:
        row["x_ceiling"] = round(ceiling / row["median_s"], 2)
        print(f"| {row['client']} | {row['median_s']:.2f} | {row['mb_per_s']:.1f} | {row['x_ceiling']:.2f} |")
    print()
    for i, p in enumerate(per_pull, 1):
        print(f"proxied pull {i}: {p['requests']} requests, {p['upstream_handshakes']} upstream connections opened "
              f"({p['full_handshakes']} full handshakes), {p['tpm_signatures']} TPM signatures")
    print(f"proxy total: {final['requests']} requests, {final['upstream_handshakes']} upstream connections, "
          f"{final['tpm_signatures']} TPM signatures (incl. its start-up check)")
    ratio = rows[1]["x_ceiling"]
    print(f"\nproxy / ceiling: {ratio:.2f} x the throughput (target >= 0.8)")
    if args.json:
        Path(args.json).write_text(json.dumps({"env": environment(), "mb": round(mb), "layers": args.layers,
                                               "tpm_sign_ms": args.tpm_latency, "results": rows,
                                               "per_pull": per_pull, "proxy_status": final}, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("proxy", help="docker pull through tpmtls proxy vs a plain registry vs skopeo")
    p.add_argument("--size-mb", type=int, default=200, help="image size (random, incompressible)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3, help="cold pulls per client")
    p.add_argument("--tpm-latency", type=float, default=0, metavar="MS",
                   help="TPM2_Sign takes MS milliseconds (hardware-paced TPM); 0: swtpm speed")
    p.add_argument("--json", metavar="FILE")
    p.set_defaults(func=proxy)
