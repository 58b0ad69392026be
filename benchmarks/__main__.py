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
from typing import Any, Callable

from tpmtls.testing import TpmTiming

from .lab import Lab, environment, per_signature

MODES = ("software", "tpmtls", "open-per-sign", "tpm2-openssl")


def _csv(text: str) -> list[str]:
    return [t for t in (s.strip() for s in text.split(",")) if t]


def _worker(lab: Lab, cfg: dict[str, Any], on_warm: Callable[[], None] | None = None) -> dict[str, Any]:
    """One point in a fresh process. `on_warm`: the worker warms up first (a handshake per thread:
    contexts open, SRK made, key loaded), then `on_warm()` runs (snapshot the TPM's counters), then the timed part."""
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks._worker", json.dumps({**cfg, "warm_up": bool(on_warm)})],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=lab.worker_env(), cwd=Path(__file__).resolve().parent.parent)
    assert proc.stdout is not None and proc.stdin is not None
    try:
        if on_warm is not None and proc.stdout.readline().strip() == "warm":
            on_warm()
            proc.stdin.write("go\n")
            proc.stdin.flush()
        out, err = proc.communicate(timeout=cfg["seconds"] * 4 + 120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        tail = (err.strip().splitlines() or ["no output"])[-1]
        return {"count": 0, "per_s": 0.0, "p50_ms": None, "p99_ms": None, "errors": -1,
                "error_samples": [f"worker failed: {tail[:200]}"]}
    return json.loads(out.strip().splitlines()[-1])


def _write_json(path: str | None, data: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2) + "\n")
        print(f"\nwrote {path}")


# ---- handshakes ------------------------------------------------------------------------


def handshakes(args: argparse.Namespace) -> int:
    algs, versions, paths = _csv(args.alg), _csv(args.tls), _csv(args.path)
    threads, modes, tpm_paths = [int(t) for t in _csv(args.threads)], _csv(args.modes), _csv(args.tpm)
    results: list[dict[str, Any]] = []
    raw: dict[str, dict[str, float]] = {}
    timing = TpmTiming.with_sign(args.tpm_latency) if args.tpm_latency else None
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tpmtls-bench-")))
        # one lab per TPM path, the same CA and server for all: the first path's modes are named
        # plainly, the others' TPM modes "<mode>@<path>" (the software key needs no TPM)
        labs = [Lab(work / tpm_path, stack, timing, tpm_path, count=True) for tpm_path in tpm_paths]
        port = labs[0].s_server()
        for lab in labs[1:]:
            lab.ca, lab.server_cert, lab.server_key = labs[0].ca, labs[0].server_cert, labs[0].server_key
        if timing:
            print(f"TPM at a hardware pace: TPM2_Sign {args.tpm_latency:g} ms", flush=True)
        for alg in algs:
            raw[alg] = {}
            for lab in labs:
                tpm_cert, tpm_key = lab.client(alg, "tpm")
                soft_cert, soft_key = labs[0].client(alg, "software")
                suffix = "" if lab is labs[0] else f"@{lab.tpm_path}"
                for n in sorted({1, max(threads)}):
                    r = _worker(lab, {"mode": "raw-sign", "key": str(tpm_key), "tcti": lab.tpm.tcti, "threads": n,
                                      "seconds": args.seconds})
                    raw[alg][f"{n}{suffix}"] = r["per_s"]
                    print(f"raw-sign{suffix} {alg} threads={n}: {r['per_s']:.0f} TPM signatures/s "
                          f"(p50 {r['p50_ms']} ms)", flush=True)
                lab_modes = modes if not suffix else [m for m in modes if m != "software"]
                for version in versions:
                    for path in paths:
                        for n in threads:
                            for mode in lab_modes + (["software+resume", "tpmtls+resume"] if args.resume else []):
                                if suffix and mode == "software+resume":
                                    continue
                                base = mode.removesuffix("+resume")
                                cert, key = (soft_cert, soft_key) if base == "software" else (tpm_cert, tpm_key)
                                cfg = {"mode": base, "path": path, "tls": version, "threads": n,
                                       "seconds": args.seconds, "port": port, "cert": str(cert), "key": str(key),
                                       "ca": str(lab.ca.cert_path), "tcti": lab.tpm.tcti,
                                       "resume": mode.endswith("+resume")}
                                row = _handshake_point(lab, cfg, {"mode": mode + suffix, "alg": alg, "tls": version,
                                                                  "path": path, "threads": n, "tpm": lab.tpm_path})
                                results.append(row)
    print()
    print(handshake_table(results, modes, args.resume, [f"@{p}" for p in tpm_paths[1:]], tpm_paths[0]))
    _write_json(args.json, {"env": environment(), "tpm_latency_ms": args.tpm_latency, "results": results,
                            "raw_sign_per_s": raw})
    return 0


def _handshake_point(lab: Lab, cfg: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """One worker run; the TPM's signatures, commands and time of the timed part counted at the TPM itself."""
    snapshot: dict[str, Any] = {}

    def warm() -> None:
        snapshot.update(signatures=lab.tpm.latency.signatures() if lab.tpm.latency else None,
                        commands=lab.tpm_commands(), busy=lab.tpm_busy())

    r = _worker(lab, cfg, warm)
    tpm_signs, commands, busy = snapshot.get("signatures"), snapshot.get("commands", {}), snapshot.get("busy", 0.0)
    if lab.tpm.latency is not None and tpm_signs is not None:
        r["tpm_signatures"] = lab.tpm.latency.signatures() - tpm_signs
    row.update({"handshakes_per_s": r["per_s"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
                "errors": r["errors"], "count": r["count"]})
    if "tpm_signatures" in r:
        row["tpm_signatures"] = r["tpm_signatures"]
        row.update(per_signature(lab, commands, busy, r["tpm_signatures"]))
    if r.get("error_samples"):
        row["error_samples"] = r["error_samples"]
    per_sig = row.get("tpm_commands_per_signature")
    print(f"  {row['alg']} TLS{row['tls']} {row['path']:9} threads={row['threads']:<2} {row['mode']:20} "
          f"{r['per_s']:8.1f}/s  p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms  errors {r['errors']}  "
          f"TPM signatures {r.get('tpm_signatures', '-')}"
          + (f"  TPM commands/signature {per_sig}  TPM ms/signature {row['tpm_ms_per_signature']}" if per_sig else ""),
          flush=True)
    return row


def handshake_table(results: list[dict[str, Any]], modes: list[str], resume: bool, others: list[str] | None = None,
                    first: str = "tabrmd") -> str:
    """One line per point: handshakes/s per mode, then tpmtls's ratios to the others.

    `others`: suffixes of further TPM paths ("@device"): their tpmtls column, its ratio to
    the first path's, and TPM commands per signature of each path's tpmtls.
    """
    others = others or []
    cols = list(modes) + (["software+resume", "tpmtls+resume"] if resume else []) + [f"tpmtls{o}" for o in others]
    head = f"{'alg':9} {'TLS':4} {'path':9} {'thr':>3} | " + " | ".join(f"{c:>13}" for c in cols)
    head += " | tpmtls/sw  /tpm2-ossl  /open-per-sign" + ("  resumed/sw-resumed" if resume else "")
    head += "".join(f"  {o[1:]}/{first}  cmds/sig" for o in others)
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
                     + (f" {ratio('tpmtls+resume', 'software+resume'):>19}" if resume else "")
                     + "".join(f" {ratio('tpmtls' + o, 'tpmtls'):>13} {commands(o, by):>9}" for o in others))
    lines.append("(handshakes/s; !N = N failed handshakes in that run"
                 + (f"; cmds/sig: TPM commands per signature, {first} / other path)" if others else ")"))
    return "\n".join(lines)


def commands(suffix: str, by: dict[str, Any]) -> str:
    """TPM commands per signature of tpmtls on the first path and on the other one ('a/b')."""
    first, other = by.get("tpmtls", {}), by.get("tpmtls" + suffix, {})
    a, b = first.get("tpm_commands_per_signature"), other.get("tpm_commands_per_signature")
    return f"{a if a is not None else '-'}/{b if b is not None else '-'}"


# ---- pool ------------------------------------------------------------------------------


def pool(args: argparse.Namespace) -> int:
    import hashlib

    from tpm2_pytss.constants import TPM2_ALG

    from tpmtls.tpm.keys import _scheme  # one TPM2_Sign per call, as a handshake makes

    sizes, threads = [int(s) for s in _csv(args.sizes)], [int(t) for t in _csv(args.threads)]
    results: list[dict[str, Any]] = []
    digest = hashlib.sha256(b"pool benchmark").digest()
    timing = TpmTiming.with_sign(args.tpm_latency) if args.tpm_latency else None
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tpmtls-bench-")))
        for tpm_path in _csv(args.tpm):
            lab = Lab(work / tpm_path, stack, timing, tpm_path, count=True)
            _, key_path = lab.client(args.alg, "tpm")
            alg = TPM2_ALG.ECDSA if args.alg.startswith("ecc") else TPM2_ALG.RSASSA
            scheme = _scheme(alg, "sha256")
            for size in sizes:
                for n in threads:
                    row = _pool_point(lab, key_path, scheme, digest, size, n, args.seconds)
                    row["alg"] = args.alg
                    results.append(row)
    print()
    print(pool_table(results, sizes, threads))
    _write_json(args.json, {"env": environment(), "results": results})
    return 0


def _pool_point(lab: Lab, key_path: Path, scheme: Any, digest: bytes, size: int, n: int, seconds: float) -> dict[str, Any]:
    """`n` threads signing through a pool of `size` contexts for `seconds`, after warming every context."""
    import tpmtls

    p = tpmtls.Pool(lab.tpm.tcti, size=size)
    key = tpmtls.connect(pool=p).load_key(key_path)
    # warm every context (open, SRK made, key loaded): `size` operations held at once get a context each
    barrier = threading.Barrier(size)
    warmers = [threading.Thread(target=p.run, args=("warm", lambda ctx: (ctx.key(key.blob), barrier.wait(30))))
               for _ in range(size)]
    for t in warmers:
        t.start()
    for t in warmers:
        t.join()
    key._sign_with(scheme, digest)
    before = p.stats()
    busy0, commands0 = lab.tpm_busy(), lab.tpm_commands()
    end = time.monotonic() + seconds
    count = [0] * n

    def run(i: int) -> None:
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
    row = {"tpm": lab.tpm_path, "pool_size": size, "threads": n, "signatures_per_s": round(signs / elapsed, 1),
           "waits": waits,
           "mean_wait_ms": round((after.wait_seconds - before.wait_seconds) / waits * 1000, 2) if waits else 0,
           "max_wait_ms": round(after.max_wait_seconds * 1000, 2),
           "mean_sign_ms": round((after.sign_seconds - before.sign_seconds) / signs * 1000, 2) if signs else None,
           "errors": after.errors - before.errors, "rebuilds": after.rebuilds - before.rebuilds,
           # fairness: the least and most signatures one thread got in the same time
           "per_thread_min": min(count), "per_thread_max": max(count)}
    row.update(per_signature(lab, commands0, busy0, signs))
    if lab.timing_modelled:  # share of the run the TPM was executing commands
        row["tpm_busy"] = round((lab.tpm_busy() - busy0) / elapsed, 2)
    print(f"  {lab.tpm_path:6} size={size} threads={n:<2} {row['signatures_per_s']:8.1f} signatures/s  "
          f"mean sign {row['mean_sign_ms']} ms  waits {waits} (mean {row['mean_wait_ms']} ms, max "
          f"{row['max_wait_ms']} ms)  per thread {min(count)}..{max(count)}  "
          f"TPM commands/signature {row['tpm_commands_per_signature']}"
          + (f"  TPM busy {row['tpm_busy']:.0%}" if "tpm_busy" in row else ""), flush=True)
    return row


def pool_table(results: list[dict[str, Any]], sizes: list[int], threads: list[int]) -> str:
    head = f"{'TPM':6} {'threads':>7} | " + " | ".join(f"{'size ' + str(s):>10}" for s in sizes) + " | cmds/sig"
    lines = [head, "-" * len(head)]
    for tpm_path in dict.fromkeys(r.get("tpm", "tabrmd") for r in results):
        for n in threads:
            cells, per_sig = [], []
            for s in sizes:
                r = next((r for r in results if r["pool_size"] == s and r["threads"] == n
                          and r.get("tpm", "tabrmd") == tpm_path), None)
                cells.append(f"{r['signatures_per_s']:>10.1f}" if r else f"{'-':>10}")
                if r and r.get("tpm_commands_per_signature") is not None:
                    per_sig.append(r["tpm_commands_per_signature"])
            lines.append(f"{tpm_path:6} {n:>7} | " + " | ".join(cells)
                         + f" | {min(per_sig) if per_sig else '-'}..{max(per_sig) if per_sig else '-'}")
    lines.append("(TPM signatures/s through the pool; cmds/sig: TPM commands per signature, lowest..highest size)")
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
    p.add_argument("--tpm", default="tabrmd", help="TPM paths: tabrmd, device (the /dev/tpmrm0 stand-in), or both")
    p.add_argument("--resume", action="store_true", help="also tpmtls with TLS session resumption")
    p.add_argument("--tpm-latency", type=float, default=0, metavar="MS",
                   help="TPM2_Sign takes MS milliseconds (hardware-paced forwarder); 0: swtpm speed")
    p.add_argument("--json", metavar="FILE")
    p.set_defaults(func=handshakes)
    p = sub.add_parser("pool", help="pool size x threads: where the TPM saturates")
    p.add_argument("--tpm", default="tabrmd", help="TPM paths: tabrmd, device (the /dev/tpmrm0 stand-in), or both")
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
