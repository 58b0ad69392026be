"""`python -m benchmarks connections`: new HTTPS connections with a TPM key, at a real TPM's pace.

A client that opens connections freely pays one TPM signature per full handshake: on a
discrete TPM (40–250 ms a signature) that caps it at a few connections a second. Two
runs, side by side in one process, against `openssl s_server -www` (client certificates
required, a new connection per request):
- sequential: one thread, `--count` requests through `requests_session` with a software
  key, with the TPM key (resumption on: the default), and with the TPM key and
  `resume=False`;
- fan-out: `--threads` threads sharing one `ssl_context`, each opening connections
  round-robin to `--servers` servers.
The TPM is swtpm behind tpm2-abrmd, or with `--tpm device` behind the lab's /dev/tpmrm0
stand-in; `--tpm-latency MS` puts the hardware-paced forwarder (tpmtls.testing.TpmTiming)
in between, so TPM2_Sign takes MS milliseconds. TPM signatures and all TPM commands are
counted at the TPM (the forwarder).
"""

from __future__ import annotations

import argparse
import http.client
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import tpmtls
from tpmtls.testing import TpmTiming
from tpmtls.tpm.pool import default_pool

from .lab import Lab, environment, per_signature


def _signatures(lab: Lab) -> int:
    if lab.tpm.latency is not None:
        return lab.tpm.latency.signatures()
    return default_pool(lab.tpm.tcti).stats().signatures


def _sequential(lab: Lab, port: int, cert: Path, key: Path, resume: bool, count: int) -> dict[str, Any]:
    session = tpmtls.requests_session(cert, key, lab.ca.cert_path, tcti=lab.tpm.tcti, resume=resume)
    url = f"https://localhost:{port}/"
    errors, before = 0, _signatures(lab)
    t0 = time.perf_counter()
    with session:
        for _ in range(count):
            try:
                if not session.get(url, timeout=60).ok:
                    errors += 1
            except Exception:  # noqa: BLE001 - counted, the run goes on
                errors += 1
    elapsed = time.perf_counter() - t0
    return {"connections": count, "per_s": round(count / elapsed, 1), "errors": errors,
            "tpm_signatures": _signatures(lab) - before}


def _fan_out(lab: Lab, ports: list[int], cert: Path, key: Path, threads: int, per_thread: int) -> dict[str, Any]:
    ctx = tpmtls.ssl_context(cert, key, lab.ca.cert_path, tcti=lab.tpm.tcti)
    errors: list[str] = []
    before = _signatures(lab)

    def client(i: int) -> None:
        for n in range(per_thread):
            port = ports[(i + n) % len(ports)]
            conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=60)
            try:
                conn.request("GET", "/")
                conn.getresponse().read()
            except Exception as e:  # noqa: BLE001 - counted, the run goes on
                errors.append(f"{type(e).__name__}: {e}")
            finally:
                conn.close()

    workers = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - t0
    total = threads * per_thread
    assert ctx.sessions is not None
    stats = ctx.sessions.stats()
    return {"threads": threads, "servers": len(ports), "connections": total, "per_s": round(total / elapsed, 1),
            "errors": len(errors), "error_samples": errors[:3], "tpm_signatures": _signatures(lab) - before,
            "pool_contexts": default_pool(lab.tpm.tcti).size, "resumed": stats.resumed_handshakes,
            "full": stats.full_handshakes}


def run(args: argparse.Namespace) -> int:
    timing = TpmTiming.with_sign(args.tpm_latency) if args.tpm_latency else None
    pace = f"TPM2_Sign {args.tpm_latency:g} ms (hardware-paced forwarder)" if timing else "swtpm speed"
    sequential: list[dict[str, Any]] = []
    with ExitStack() as stack:
        lab = Lab(Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tpmtls-bench-"))), stack,
                  timing=timing, tpm_path=args.tpm, count=True)
        ports = [lab.s_server() for _ in range(max(1, args.servers))]
        tpm_cert, tpm_key = lab.client("ecc-p256", "tpm")
        soft_cert, soft_key = lab.client("ecc-p256", "software")
        print(f"new HTTPS connections, {pace}", flush=True)
        for mode, cert, key, resume in (("software", soft_cert, soft_key, True), ("tpmtls", tpm_cert, tpm_key, True),
                                        ("tpmtls, resume=False", tpm_cert, tpm_key, False)):
            commands, busy = lab.tpm_commands(), lab.tpm_busy()
            row = {"mode": mode, **_sequential(lab, ports[0], cert, key, resume, args.count)}
            row.update(per_signature(lab, commands, busy, row["tpm_signatures"]))
            sequential.append(row)
            print(f"  sequential {mode:22} {row['per_s']:8.1f}/s  TPM signatures {row['tpm_signatures']:4}  "
                  f"TPM commands/signature {row['tpm_commands_per_signature']}  errors {row['errors']}", flush=True)
        commands, busy = lab.tpm_commands(), lab.tpm_busy()
        fan = _fan_out(lab, ports, tpm_cert, tpm_key, args.threads, args.per_thread)
        fan.update(per_signature(lab, commands, busy, fan["tpm_signatures"]))
        print(f"  fan-out {fan['threads']} threads x {fan['servers']} servers: {fan['per_s']:.1f}/s  TPM signatures "
              f"{fan['tpm_signatures']} (servers x pool contexts = {fan['servers'] * fan['pool_contexts']})  "
              f"errors {fan['errors']}", flush=True)
    print()
    print(table(sequential, fan, f"{pace}, TPM via {args.tpm}", args.count))
    data = {"env": environment(), "tpm": args.tpm, "tpm_latency_ms": args.tpm_latency, "sequential": sequential,
            "fan_out": fan}
    if args.json:
        Path(args.json).write_text(__import__("json").dumps(data, indent=2) + "\n")
        print(f"\nwrote {args.json}")
        chart(sequential, pace, Path(args.json).with_suffix(".png"))
    return 0


def table(sequential: list[dict[str, Any]], fan: dict[str, Any], pace: str, count: int) -> str:
    soft = next(r for r in sequential if r["mode"] == "software")["per_s"] or 1
    lines = [f"{count} sequential new connections through requests_session ({pace})",
             f"{'mode':24} {'conn/s':>8} {'x software':>10} {'TPM signatures':>15} {'TPM cmds/sig':>13} {'errors':>7}"]
    for r in sequential:
        per_sig = r.get("tpm_commands_per_signature")
        lines.append(f"{r['mode']:24} {r['per_s']:>8.1f} {r['per_s'] / soft:>10.2f} {r['tpm_signatures']:>15} "
                     f"{per_sig if per_sig is not None else '-':>13} {r['errors']:>7}")
    lines.append(f"fan-out: {fan['threads']} threads x {fan['servers']} servers, {fan['connections']} connections: "
                 f"{fan['per_s']:.1f}/s, {fan['tpm_signatures']} TPM signatures (bound: servers x pool contexts = "
                 f"{fan['servers'] * fan['pool_contexts']}), {fan['errors']} errors")
    return "\n".join(lines)


def chart(sequential: list[dict[str, Any]], pace: str, path: Path) -> None:
    """A bar chart of each mode's rate relative to the software key (needs the `bench` extra: matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(no chart: install the bench extra, pip install 'tpmtls[bench]')")
        return
    soft = next(r for r in sequential if r["mode"] == "software")["per_s"] or 1
    fig, ax = plt.subplots(figsize=(6, 3))
    modes = [r["mode"] for r in sequential]
    ratios = [r["per_s"] / soft for r in sequential]
    bars = ax.barh(modes, ratios, color=["#999999", "#2a7ab0", "#c0504d"][: len(modes)])
    for bar, r in zip(bars, sequential, strict=True):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {r['tpm_signatures']} TPM sig.",
                va="center", fontsize=8)
    ax.axvline(1.0, color="black", linewidth=0.5)
    ax.set_xlabel("new connections/s relative to a software key")
    ax.set_title(f"requests_session, {pace}", fontsize=9)
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("connections", help="new HTTPS connections with session resumption, at a real TPM's pace")
    p.add_argument("--tpm-latency", type=float, default=0, metavar="MS",
                   help="TPM2_Sign takes MS milliseconds (hardware-paced forwarder); 0: swtpm speed")
    p.add_argument("--tpm", default="tabrmd", choices=("tabrmd", "device"),
                   help="tpm2-abrmd, or the /dev/tpmrm0 stand-in (tpmtls's default TCTI kind)")
    p.add_argument("--count", type=int, default=200, help="sequential connections per mode")
    p.add_argument("--threads", type=int, default=16)
    p.add_argument("--servers", type=int, default=4)
    p.add_argument("--per-thread", type=int, default=10, help="connections per thread in the fan-out")
    p.add_argument("--json", metavar="FILE", help="results; a PNG chart is written beside it")
    p.set_defaults(func=run)
