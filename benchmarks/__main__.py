"""`python -m benchmarks {handshakes,pool,push,daemon,enroll,proxy}`: tpmtls side by side with the alternatives.

Every comparison is made in one run, on the same TPM, CA and server: read the ratios,
not the absolute rates (a shared 2-core machine is noisy). Each prints a table and, with
--json FILE, writes the results.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from tpmtls.testing import TpmTiming

from .lab import Lab, environment

MODES = ("software", "tpmtls", "open-per-sign", "tpm2-openssl")


def _csv(text: str) -> list[str]:
    return [t for t in (s.strip() for s in text.split(",")) if t]


def _worker(lab: Lab, cfg: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "benchmarks._worker", json.dumps(cfg)], capture_output=True,
                          text=True, env=lab.worker_env(), timeout=cfg["seconds"] * 4 + 120,
                          cwd=Path(__file__).resolve().parent.parent)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"count": 0, "per_s": 0.0, "p50_ms": None, "p99_ms": None, "errors": -1,
                "error_samples": [f"worker failed: {tail[:200]}"]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _write_json(path: str | None, data: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2) + "\n")
        print(f"\nwrote {path}")


# ---- handshakes ------------------------------------------------------------------------


def handshakes(args: argparse.Namespace) -> int:
    algs, versions, paths = _csv(args.alg), _csv(args.tls), _csv(args.path)
    threads, modes = [int(t) for t in _csv(args.threads)], _csv(args.modes)
    results: list[dict[str, Any]] = []
    raw: dict[str, dict[str, float]] = {}
    timing = TpmTiming.with_sign(args.tpm_latency) if args.tpm_latency else None
    with ExitStack() as stack:
        lab = Lab(Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tpmtls-bench-"))), stack, timing)
        port = lab.s_server()
        if timing:
            print(f"TPM at a hardware pace: TPM2_Sign {args.tpm_latency:g} ms", flush=True)
        for alg in algs:
            tpm_cert, tpm_key = lab.client(alg, "tpm")
            soft_cert, soft_key = lab.client(alg, "software")
            raw[alg] = {}
            for n in sorted({1, max(threads)}):
                r = _worker(lab, {"mode": "raw-sign", "key": str(tpm_key), "tcti": lab.tpm.tcti, "threads": n,
                                  "seconds": args.seconds})
                raw[alg][str(n)] = r["per_s"]
                print(f"raw-sign {alg} threads={n}: {r['per_s']:.0f} TPM signatures/s (p50 {r['p50_ms']} ms)",
                      flush=True)
            for version in versions:
                for path in paths:
                    for n in threads:
                        for mode in modes + (["software+resume", "tpmtls+resume"] if args.resume else []):
                            base = mode.removesuffix("+resume")
                            cert, key = (soft_cert, soft_key) if base == "software" else (tpm_cert, tpm_key)
                            cfg = {"mode": base, "path": path, "tls": version, "threads": n, "seconds": args.seconds,
                                   "port": port, "cert": str(cert), "key": str(key), "ca": str(lab.ca.cert_path),
                                   "tcti": lab.tpm.tcti, "resume": mode.endswith("+resume")}
                            tpm_signs = lab.tpm.latency.signatures() if lab.tpm.latency else None
                            r = _worker(lab, cfg)
                            if lab.tpm.latency is not None and tpm_signs is not None:  # counted at the TPM itself
                                r["tpm_signatures"] = lab.tpm.latency.signatures() - tpm_signs
                            row = {"mode": mode, "alg": alg, "tls": version, "path": path, "threads": n,
                                   "handshakes_per_s": r["per_s"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
                                   "errors": r["errors"], "count": r["count"]}
                            if "tpm_signatures" in r:
                                row["tpm_signatures"] = r["tpm_signatures"]
                            if r.get("error_samples"):
                                row["error_samples"] = r["error_samples"]
                            results.append(row)
                            print(f"  {alg} TLS{version} {path:9} threads={n:<2} {mode:14} "
                                  f"{r['per_s']:8.1f}/s  p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms  "
                                  f"errors {r['errors']}  TPM signatures {r.get('tpm_signatures', '-')}", flush=True)
    print()
    print(handshake_table(results, modes, args.resume))
    _write_json(args.json, {"env": environment(), "tpm_latency_ms": args.tpm_latency, "results": results,
                            "raw_sign_per_s": raw})
    return 0


def handshake_table(results: list[dict[str, Any]], modes: list[str], resume: bool) -> str:
    """One line per point: handshakes/s per mode, then tpmtls's ratios to the others."""
    cols = list(modes) + (["software+resume", "tpmtls+resume"] if resume else [])
    head = f"{'alg':9} {'TLS':4} {'path':9} {'thr':>3} | " + " | ".join(f"{c:>13}" for c in cols)
    head += " | tpmtls/sw  /tpm2-ossl  /open-per-sign" + ("  resumed/sw-resumed" if resume else "")
    lines = [head, "-" * len(head)]
    keys = sorted({(r["alg"], r["tls"], r["path"], r["threads"]) for r in results},
                  key=lambda k: (k[0], k[1], k[2], k[3]))
    for key in keys:
        by = {r["mode"]: r for r in results if (r["alg"], r["tls"], r["path"], r["threads"]) == key}

        def cell(mode: str, by: dict[str, Any] = by) -> str:
            r = by.get(mode)
            if r is None:
                return f"{'-':>13}"
            err = f"!{r['errors']}" if r["errors"] else ""
            return f"{r['handshakes_per_s']:>9.1f}{err:>4}"

        def ratio(a: str, b: str, by: dict[str, Any] = by) -> str:
            ra, rb = by.get(a), by.get(b)
            if not ra or not rb or not rb["handshakes_per_s"]:
                return "   -  "
            return f"{ra['handshakes_per_s'] / rb['handshakes_per_s']:6.2f}"

        lines.append(f"{key[0]:9} {key[1]:4} {key[2]:9} {key[3]:>3} | " + " | ".join(cell(c) for c in cols)
                     + f" | {ratio('tpmtls', 'software'):>9} {ratio('tpmtls', 'tpm2-openssl'):>10} "
                       f"{ratio('tpmtls', 'open-per-sign'):>14}"
                     + (f" {ratio('tpmtls+resume', 'software+resume'):>19}" if resume else ""))
    lines.append("(handshakes/s; !N = N failed handshakes in that run)")
    return "\n".join(lines)


# ---- pool ------------------------------------------------------------------------------


def pool(args: argparse.Namespace) -> int:
    import hashlib

    from tpm2_pytss.constants import TPM2_ALG

    import tpmtls
    from tpmtls.tpm.keys import _scheme  # one TPM2_Sign per call, as a handshake makes

    sizes, threads = [int(s) for s in _csv(args.sizes)], [int(t) for t in _csv(args.threads)]
    results: list[dict[str, Any]] = []
    digest = hashlib.sha256(b"pool benchmark").digest()
    timing = TpmTiming.with_sign(args.tpm_latency) if args.tpm_latency else None
    with ExitStack() as stack:
        lab = Lab(Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tpmtls-bench-"))), stack, timing)
        _, key_path = lab.client(args.alg, "tpm")
        alg = TPM2_ALG.ECDSA if args.alg.startswith("ecc") else TPM2_ALG.RSASSA
        scheme = _scheme(alg, "sha256")
        for size in sizes:
            for n in threads:
                p = tpmtls.Pool(lab.tpm.tcti, size=size)
                key = tpmtls.connect(pool=p).load_key(key_path)
                for _ in range(size * 2):  # warm every context: open, SRK, key loaded
                    key._sign_with(scheme, digest)
                before = p.stats()
                busy0 = lab.tpm.latency.busy if lab.tpm.latency else 0.0
                end = time.monotonic() + args.seconds
                count = [0] * n

                def run(i: int, key: Any = key, end: float = end, count: list[int] = count) -> None:
                    while time.monotonic() < end:
                        key._sign_with(scheme, digest)
                        count[i] += 1

                ts = [threading.Thread(target=run, args=(i,)) for i in range(n)]
                t0 = time.monotonic()
                for t in ts:
                    t.start()
                for t in ts:
                    t.join()
                elapsed = time.monotonic() - t0
                after = p.stats()
                p.close()
                signs = after.signatures - before.signatures
                waits = after.waits - before.waits
                row = {"alg": args.alg, "pool_size": size, "threads": n, "signatures_per_s": round(signs / elapsed, 1),
                       "waits": waits,
                       "mean_wait_ms": round((after.wait_seconds - before.wait_seconds) / waits * 1000, 2) if waits else 0,
                       "max_wait_ms": round(after.max_wait_seconds * 1000, 2),
                       "mean_sign_ms": round((after.sign_seconds - before.sign_seconds) / signs * 1000, 2) if signs else None,
                       "errors": after.errors - before.errors, "rebuilds": after.rebuilds - before.rebuilds,
                       # fairness: the least and most signatures one thread got in the same time
                       "per_thread_min": min(count), "per_thread_max": max(count)}
                if lab.tpm.latency is not None:  # share of the run the TPM was executing commands
                    row["tpm_busy"] = round((lab.tpm.latency.busy - busy0) / elapsed, 2)
                results.append(row)
                print(f"  size={size} threads={n:<2} {row['signatures_per_s']:8.1f} signatures/s  "
                      f"mean sign {row['mean_sign_ms']} ms  waits {waits} (mean {row['mean_wait_ms']} ms, max "
                      f"{row['max_wait_ms']} ms)  per thread {min(count)}..{max(count)}"
                      + (f"  TPM busy {row['tpm_busy']:.0%}" if timing else ""), flush=True)
    print()
    print(pool_table(results, sizes, threads))
    _write_json(args.json, {"env": environment(), "results": results})
    return 0


def pool_table(results: list[dict[str, Any]], sizes: list[int], threads: list[int]) -> str:
    head = f"{'threads':>7} | " + " | ".join(f"{'size ' + str(s):>10}" for s in sizes)
    lines = [head, "-" * len(head)]
    for n in threads:
        cells = []
        for s in sizes:
            r = next((r for r in results if r["pool_size"] == s and r["threads"] == n), None)
            cells.append(f"{r['signatures_per_s']:>10.1f}" if r else f"{'-':>10}")
        lines.append(f"{n:>7} | " + " | ".join(cells))
    lines.append("(TPM signatures/s through the pool)")
    return "\n".join(lines)


# ---- push ------------------------------------------------------------------------------


def _measured(argv: list[str], env: dict[str, str]) -> tuple[float, float, int, str]:
    """Wall time, peak RSS (MB) of the child, its exit code and last stderr line."""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    err_box: list[bytes] = []
    reader = threading.Thread(target=lambda: err_box.append(proc.stderr.read()))  # type: ignore[union-attr]
    reader.start()
    _, status, usage = os.wait4(proc.pid, 0)
    reader.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = err_box[0].decode(errors="replace").strip().splitlines() if err_box else []
    return time.monotonic() - t0, usage.ru_maxrss / 1024, proc.returncode, err[-1] if err else ""


def push(args: argparse.Namespace) -> int:
    """tpmtls-push (TPM key) vs skopeo copy (software key): random and real-file content, from a
    docker-archive and from the daemon; a fresh registry and blob cache per cold run."""
    from tpmtls.lab import Dockerd, Registry
    from tpmtls.registry.sources import COMPRESSOR

    from .content import random_image, real_image

    contents, sources = _csv(args.content), _csv(args.sources)
    results: list[dict[str, Any]] = []
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tpmtls-bench-")))
        lab = Lab(work, stack, TpmTiming.with_sign(args.tpm_latency) if args.tpm_latency else None)
        tpm_cert, tpm_key = lab.client("ecc-p256", "tpm")
        soft_cert, soft_key = lab.client("ecc-p256", "software")
        dirs = {}
        for kind, (cert, key) in (("tpm", (tpm_cert, tpm_key)), ("soft", (soft_cert, soft_key))):
            d = work / f"certs-{kind}"
            d.mkdir()
            shutil.copy(lab.ca.cert_path, d / "ca.crt")
            shutil.copy(cert, d / "client.cert")
            shutil.copy(key, d / "client.key")
            dirs[kind] = d
        daemon = stack.enter_context(Dockerd(work / "dockerd")) if "daemon" in sources else None
        print(f"compressor: tpmtls {COMPRESSOR}; skopeo: its default (klauspost pgzip)", flush=True)
        for content in contents:
            if content == "random":
                image, size = random_image(work / "random.tar", args.size_mb, max(1, args.layers))
                name = "bench:1"
                print(f"image random: {size / 1e6:.0f} MB in {max(1, args.layers)} random (incompressible) layers",
                      flush=True)
            else:
                image, size = real_image(work / "real.tar", args.real_layers)
                name = "bench-real:1"
                print(f"image real: {size / 1e6:.0f} MB of real files in {len(_tar_layers(image))} layers "
                      "(git-core, python stdlib, vim, perl, icons: the first --real-layers)", flush=True)
            if daemon is not None:
                load = subprocess.run(["docker", "load", "-i", str(image)], env={**os.environ, **daemon.env},
                                      capture_output=True, text=True, timeout=600)
                if load.returncode != 0:
                    raise SystemExit(f"docker load failed: {load.stderr.strip()[-300:]}")
            for source in sources:
                for tool in ("tpmtls-push", "skopeo"):
                    registry = stack.enter_context(Registry(lab.server_cert, lab.server_key, lab.ca.cert_path,
                                                            work / f"registry-{content}-{source}-{tool}"))
                    home = work / f"home-{content}-{source}-{tool}"  # a fresh blob cache: the cold run is cold
                    home.mkdir()
                    env = {**lab.worker_env(), "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"),
                           **(daemon.env if daemon is not None else {})}
                    dest = f"localhost:{registry.port}/bench:1"
                    src = f"docker-archive:{image}" if source == "archive" else name
                    if tool == "tpmtls-push":
                        argv = [sys.executable, "-m", "tpmtls.cli.push", src, dest, "--cert-dir", str(dirs["tpm"])]
                    else:
                        skopeo_src = f"docker-archive:{image}" if source == "archive" else f"docker-daemon:{name}"
                        argv = ["skopeo", "copy", "--insecure-policy", "--dest-cert-dir", str(dirs["soft"])]
                        if source == "daemon" and daemon is not None:
                            argv += ["--src-daemon-host", daemon.host]
                        argv += [skopeo_src, f"docker://{dest}"]
                    for run in ("cold", "warm"):
                        seconds, rss, rc, err = _measured(argv, env)
                        row = {"content": content, "source": source, "tool": tool,
                               "key": "TPM (ECC P-256)" if tool == "tpmtls-push" else "software (ECC P-256)",
                               "run": run, "mb": round(size / 1e6), "seconds": round(seconds, 2),
                               "mb_per_s": round(size / 1e6 / seconds, 1), "peak_rss_mb": round(rss, 1),
                               "ok": rc == 0}
                        if rc:
                            row["error"] = err
                        results.append(row)
                        print(f"  {content:6} {source:7} {tool:12} {run}: {seconds:6.2f} s  {row['mb_per_s']:7.1f} MB/s"
                              f"  peak RSS {rss:6.1f} MB{'  FAILED: ' + err if rc else ''}", flush=True)
    print()
    print(push_table(results))
    _write_json(args.json, {"env": environment(), "compressor": COMPRESSOR, "results": results})
    return 0


def _tar_layers(image: Path) -> list[str]:
    import tarfile

    with tarfile.open(image) as tar:
        return [m.name for m in tar.getmembers() if m.name.endswith("/layer.tar")]


def push_table(results: list[dict[str, Any]]) -> str:
    """Markdown: one row per content/source/tool/run, then tpmtls-push / skopeo throughput ratios."""
    lines = ["| content | source | tool | run | MB | seconds | MB/s | peak RSS MB |",
             "|---|---|---|---|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['content']} | {r['source']} | {r['tool']} | {r['run']} | {r['mb']} | "
                     f"{r['seconds']:.2f} | {r['mb_per_s']:.1f} | {r['peak_rss_mb']:.1f} |"
                     + ("" if r["ok"] else " FAILED"))
    by = {(r["content"], r["source"], r["tool"], r["run"]): r for r in results}
    for content, source in dict.fromkeys((r["content"], r["source"]) for r in results):
        for run in ("cold", "warm"):
            ours, theirs = by.get((content, source, "tpmtls-push", run)), by.get((content, source, "skopeo", run))
            if ours and theirs and ours["ok"] and theirs["ok"]:
                lines.append(f"\ntpmtls-push / skopeo, {content} {source} {run}: "
                             f"{theirs['seconds'] / ours['seconds']:.2f} x the throughput")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = parser.add_subparsers(dest="name", required=True)
    p = sub.add_parser("handshakes", help="TLS handshakes with client auth: software, tpmtls, open-per-sign, tpm2-openssl")
    p.add_argument("--threads", default="1,4,16")
    p.add_argument("--seconds", type=float, default=3.0, help="per point")
    p.add_argument("--tls", default="1.3", help="1.3, 1.2 or 1.3,1.2")
    p.add_argument("--alg", default="ecc-p256,rsa2048")
    p.add_argument("--path", default="pyopenssl,stdlib")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--resume", action="store_true", help="also tpmtls with TLS session resumption")
    p.add_argument("--tpm-latency", type=float, default=0, metavar="MS",
                   help="TPM2_Sign takes MS milliseconds (hardware-paced forwarder); 0: swtpm speed")
    p.add_argument("--json", metavar="FILE")
    p.set_defaults(func=handshakes)
    p = sub.add_parser("pool", help="pool size x threads: where the TPM saturates")
    p.add_argument("--sizes", default="1,2,4,8")
    p.add_argument("--threads", default="1,2,4,8,16,32")
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--alg", default="ecc-p256")
    p.add_argument("--tpm-latency", type=float, default=0, metavar="MS",
                   help="TPM2_Sign takes MS milliseconds (hardware-paced forwarder); 0: swtpm speed")
    p.add_argument("--json", metavar="FILE")
    p.set_defaults(func=pool)
    p = sub.add_parser("push", help="tpmtls-push (TPM key) vs skopeo (software key), cold and warm")
    p.add_argument("--content", default="random,real", help="random (incompressible), real (files of this machine)")
    p.add_argument("--sources", default="archive,daemon", help="archive (docker-archive:), daemon (local dockerd)")
    p.add_argument("--size-mb", type=int, default=200, help="size of the random image")
    p.add_argument("--layers", type=int, default=4, help="layers of the random image")
    p.add_argument("--real-layers", type=int, default=5, help="layers of the real-file image (1-5, smallest first)")
    p.add_argument("--tpm-latency", type=float, default=0, metavar="MS",
                   help="TPM2_Sign takes MS milliseconds (hardware-paced forwarder); 0: swtpm speed")
    p.add_argument("--json", metavar="FILE")
    p.set_defaults(func=push)
    from . import connections, daemon, enroll, proxy

    daemon.register(sub)
    enroll.register(sub)
    proxy.register(sub)
    connections.add_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
