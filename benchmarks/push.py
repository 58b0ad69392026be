"""`python -m benchmarks push`: tpmtls-push and tpmtls-pull against skopeo, cold and warm.

tpmtls uses the TPM key, skopeo a software key on the same chain. For every content
(random, incompressible layers; real files of this machine) and source (a
docker-archive; the image `docker load`ed into a private dockerd, which skopeo reads as
`docker-daemon:`): a fresh registry and blob cache, a cold push, then `--rounds` warm
re-pushes (the registry has every blob; the median is reported), then one more warm
re-push under strace that counts the layer bytes the tool read (`_reads`: from the
archive, or from the Docker socket, with the `docker save` requests). Then pulls from
that registry to an OCI layout: tpmtls-pull against `skopeo copy docker://… oci:…`,
cold (empty directory) and warm (the same directory again).

tpmtls runs from compiled bytecode, as an installed package does (pip compiles it): the
children get a private `PYTHONPYCACHEPREFIX` and a first untimed run fills it. Python's
own start-up is measured beside (`python -c pass`, `tpmtls-push --help`).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from tpmtls.testing import TpmTiming

from . import _reads
from .lab import Lab, environment


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


def _python_env(work: Path, base: dict[str, str]) -> dict[str, str]:
    """The children's environment: bytecode written to (and read from) a prefix in `work`."""
    env = {k: v for k, v in base.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    return env


def startup(env: dict[str, str], rounds: int = 5) -> dict[str, float]:
    """Seconds (best of `rounds`) for the interpreter alone and for `tpmtls-push --help`."""
    out = {}
    for name, argv in (("python", [sys.executable, "-c", "pass"]),
                       ("tpmtls-push --help", [sys.executable, "-m", "tpmtls.cli.push", "--help"])):
        subprocess.run(argv, env=env, capture_output=True, timeout=120)  # fills the bytecode cache
        out[name] = round(min(_measured(argv, env)[0] for _ in range(rounds)), 3)
    return out


def push(args: Any) -> int:
    from tpmtls.lab import Dockerd, Registry
    from tpmtls.registry.sources import COMPRESSOR

    from .content import random_image, real_image

    contents, sources = _csv(args.content), _csv(args.sources)
    results: list[dict[str, Any]] = []
    pulls: list[dict[str, Any]] = []
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tpmtls-bench-")))
        lab = Lab(work, stack, TpmTiming.with_sign(args.tpm_latency) if args.tpm_latency else None)
        dirs = lab.cert_dirs()
        daemon = stack.enter_context(Dockerd(work / "dockerd")) if "daemon" in sources else None
        base_env = _python_env(work, lab.worker_env())
        started = startup(base_env)
        print(f"compressor: tpmtls {COMPRESSOR}; skopeo: its default (klauspost pgzip)", flush=True)
        print(f"start-up (best of 5): python -c pass {started['python']:.3f} s, tpmtls-push --help "
              f"{started['tpmtls-push --help']:.3f} s", flush=True)
        for content in contents:
            if content == "random":
                image, size = random_image(work / "random.tar", args.size_mb, max(1, args.layers))
                name = "bench:1"
                print(f"image random: {size / 1e6:.0f} MB in {max(1, args.layers)} random (incompressible) layers",
                      flush=True)
            else:
                image, size = real_image(work / "real.tar", args.real_layers)
                name = "bench-real:1"
                print(f"image real: {size / 1e6:.0f} MB of real files in {len(_reads.layer_ranges(image))} layers "
                      "(git-core, python stdlib, vim, perl, icons: the first --real-layers)", flush=True)
            if daemon is not None:
                load = subprocess.run(["docker", "load", "-i", str(image)], env={**os.environ, **daemon.env},
                                      capture_output=True, text=True, timeout=600)
                if load.returncode != 0:
                    raise SystemExit(f"docker load failed: {load.stderr.strip()[-300:]}")
            for source in sources:
                for tool in ("tpmtls", "skopeo"):
                    registry = stack.enter_context(Registry(lab.server_cert, lab.server_key, lab.ca.cert_path,
                                                            work / f"registry-{content}-{source}-{tool}"))
                    home = work / f"home-{content}-{source}-{tool}"  # a fresh blob cache: the cold run is cold
                    home.mkdir()
                    env = {**base_env, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"),
                           **(daemon.env if daemon is not None else {})}
                    dest = f"localhost:{registry.port}/bench:1"
                    argv = _push_argv(tool, source, image, name, dest, dirs, daemon)
                    row = {"content": content, "source": source, "tool": _tool_name(tool, "push"),
                           "key": "TPM (ECC P-256)" if tool == "tpmtls" else "software (ECC P-256)", "mb": round(size / 1e6)}
                    results.append(_run_row(row, "cold", [_measured(argv, env)], size))
                    results.append(_run_row(row, "warm", [_measured(argv, env) for _ in range(args.rounds)], size))
                    counted = _reads.count(argv, env, image if source == "archive" else None,
                                           daemon.host.removeprefix("unix://") if daemon is not None else None)
                    results[-1].update(layer_bytes_read=counted.layer_bytes if source == "archive" else counted.socket_bytes,
                                       save_requests=counted.save_requests)
                    print(f"    warm re-push read {results[-1]['layer_bytes_read']} layer bytes"
                          + (f", {counted.save_requests} docker save requests" if source == "daemon" else "")
                          + (f" ({'; '.join(counted.notes)})" if counted.notes else ""), flush=True)
                    if source == sources[0] and args.pull:
                        pulls += _pulls(tool, content, dest, work, env, dirs, size, args.rounds)
    print()
    print(push_table(results, pulls, started))
    if args.json:
        import json

        Path(args.json).write_text(json.dumps({"env": environment(), "compressor": COMPRESSOR, "startup_s": started,
                                               "results": results, "pulls": pulls}, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


def _csv(text: str) -> list[str]:
    return [t for t in (s.strip() for s in text.split(",")) if t]


def _tool_name(tool: str, op: str) -> str:
    return f"tpmtls-{op}" if tool == "tpmtls" else "skopeo"



def _push_argv(tool: str, source: str, image: Path, name: str, dest: str, dirs: dict[str, Path], daemon: Any) -> list[str]:
    if tool == "tpmtls":
        src = f"docker-archive:{image}" if source == "archive" else name
        return [sys.executable, "-m", "tpmtls.cli.push", src, dest, "--cert-dir", str(dirs["tpm"])]
    argv = ["skopeo", "copy", "--insecure-policy", "--dest-cert-dir", str(dirs["software"])]
    if source == "daemon":
        argv += ["--src-daemon-host", daemon.host]
    return argv + [f"docker-archive:{image}" if source == "archive" else f"docker-daemon:{name}", f"docker://{dest}"]


def _run_row(row: dict[str, Any], run: str, runs: list[tuple[float, float, int, str]], size: int) -> dict[str, Any]:
    """One result row from one or more runs: the median time, the highest RSS, failures named."""
    seconds = statistics.median(r[0] for r in runs)
    failed = [r for r in runs if r[2]]
    out = {**row, "run": run, "seconds": round(seconds, 3), "all_seconds": [round(r[0], 3) for r in runs],
           "mb_per_s": round(size / 1e6 / seconds, 1), "peak_rss_mb": round(max(r[1] for r in runs), 1),
           "ok": not failed}
    if failed:
        out["error"] = failed[0][3]
    print(f"  {row['content']:6} {row.get('source', ''):7} {row['tool']:12} {run}: {seconds:6.3f} s  "
          f"{out['mb_per_s']:7.1f} MB/s  peak RSS {out['peak_rss_mb']:6.1f} MB"
          + (f"  FAILED: {out['error']}" if failed else ""), flush=True)
    return out


def _pulls(tool: str, content: str, ref: str, work: Path, env: dict[str, str], dirs: dict[str, Path], size: int,
           rounds: int) -> list[dict[str, Any]]:
    """Pull `ref` to an OCI layout: cold into an empty directory, then warm into the same one."""
    layout = work / f"pull-{content}-{tool}"
    if tool == "tpmtls":
        argv = [sys.executable, "-m", "tpmtls.cli.pull", ref, f"oci:{layout}", "--cert-dir", str(dirs["tpm"])]
    else:
        argv = ["skopeo", "copy", "--insecure-policy", "--src-cert-dir", str(dirs["software"]), f"docker://{ref}",
                f"oci:{layout}:bench"]
    row = {"content": content, "tool": _tool_name(tool, "pull"), "mb": round(size / 1e6)}
    out = []
    for _ in range(rounds):  # cold pulls: a fresh layout each time
        shutil.rmtree(layout, ignore_errors=True)
        out.append(_measured(argv, env))
    rows = [_run_row(row, "cold", out, size)]
    rows.append(_run_row(row, "warm", [_measured(argv, env) for _ in range(rounds)], size))
    shutil.rmtree(layout, ignore_errors=True)
    return rows


def push_table(results: list[dict[str, Any]], pulls: list[dict[str, Any]] | None = None,
               started: dict[str, float] | None = None) -> str:
    """Markdown: one row per content/source/tool/run, then tpmtls / skopeo throughput ratios."""
    lines = ["| content | source | tool | run | MB | seconds | MB/s | peak RSS MB | layer bytes read |",
             "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        read = "" if r.get("layer_bytes_read") is None else str(r["layer_bytes_read"])
        if r.get("save_requests"):
            read += f" ({r['save_requests']} docker save)"
        lines.append(f"| {r['content']} | {r['source']} | {r['tool']} | {r['run']} | {r['mb']} | "
                     f"{r['seconds']:.2f} | {r['mb_per_s']:.1f} | {r['peak_rss_mb']:.1f} | {read} |"
                     + ("" if r["ok"] else " FAILED"))
    if pulls:
        lines += ["", "| content | tool | run | MB | seconds | MB/s | peak RSS MB |", "|---|---|---|---:|---:|---:|---:|"]
        for r in pulls:
            lines.append(f"| {r['content']} | {r['tool']} | {r['run']} | {r['mb']} | {r['seconds']:.2f} | "
                         f"{r['mb_per_s']:.1f} | {r['peak_rss_mb']:.1f} |" + ("" if r["ok"] else " FAILED"))
    lines.append("")
    by = {(r["content"], r["source"], r["tool"], r["run"]): r for r in results}
    for content, source in dict.fromkeys((r["content"], r["source"]) for r in results):
        for run in ("cold", "warm"):
            ours, theirs = by.get((content, source, "tpmtls-push", run)), by.get((content, source, "skopeo", run))
            if ours and theirs and ours["ok"] and theirs["ok"]:
                lines.append(f"tpmtls-push / skopeo, {content} {source} {run}: "
                             f"{theirs['seconds'] / ours['seconds']:.2f} x the throughput")
    pby = {(r["content"], r["tool"], r["run"]): r for r in pulls or []}
    for content in dict.fromkeys(r["content"] for r in pulls or []):
        for run in ("cold", "warm"):
            ours, theirs = pby.get((content, "tpmtls-pull", run)), pby.get((content, "skopeo", run))
            if ours and theirs and ours["ok"] and theirs["ok"]:
                lines.append(f"tpmtls-pull / skopeo copy, {content} {run}: "
                             f"{theirs['seconds'] / ours['seconds']:.2f} x the throughput")
    if started:
        lines.append(f"start-up (best of 5): python -c pass {started['python']:.3f} s, "
                     f"tpmtls-push --help {started['tpmtls-push --help']:.3f} s")
    return "\n".join(lines)


def register(sub: Any) -> None:
    p = sub.add_parser("push", help="tpmtls-push/pull (TPM key) vs skopeo (software key), cold and warm")
    p.add_argument("--content", default="random,real", help="random (incompressible), real (files of this machine)")
    p.add_argument("--sources", default="archive,daemon", help="archive (docker-archive:), daemon (local dockerd)")
    p.add_argument("--size-mb", type=int, default=200, help="size of the random image")
    p.add_argument("--layers", type=int, default=4, help="layers of the random image")
    p.add_argument("--real-layers", type=int, default=5, help="layers of the real-file image (1-5, smallest first)")
    p.add_argument("--rounds", type=int, default=3, help="warm pushes, and cold and warm pulls, per tool (median)")
    p.add_argument("--no-pull", dest="pull", action="store_false", help="push only")
    p.add_argument("--tpm-latency", type=float, default=0, metavar="MS",
                   help="TPM2_Sign takes MS milliseconds (hardware-paced forwarder); 0: swtpm speed")
    p.add_argument("--json", metavar="FILE")
    p.set_defaults(func=push)
