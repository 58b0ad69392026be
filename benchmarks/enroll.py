"""`python -m benchmarks enroll`: attested enrollments per minute against the embedded server.

M software TPMs with EK certificates (a private swtpm_localca) enroll at once, each from its
own worker process, against one in-process `enroll-server` (ACME device-attest-01 + Attestation
CA, file CA), once per state database: SQLite (the default, a WAL file next to the CA) and
PostgreSQL (the lab's own server on a unix socket, default durability: fsync per commit).
Printed per point: enrollments/minute, and where an enrollment's time goes — the client's TPM
operations, the server's request handling (database included), and the rest (TLS, HTTP,
ACME/JOSE on the client, waiting) — and PostgreSQL's rate as a ratio of SQLite's.
Every worker connects from 127.0.0.1, so the per-address rate limits are raised to what a fleet
spread over many addresses would be allowed in total.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _csv_ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def worker(cfg: dict[str, Any]) -> dict[str, Any]:
    """In a worker process: `count` enrollments of one TPM; their timings."""
    import tpmtls
    from tpmtls.enroll.acme_client import EnrollOptions, enroll

    tpm = tpmtls.connect(cfg["tcti"])
    out: list[dict[str, float]] = []
    errors: list[str] = []
    workdir = Path(cfg["workdir"])
    for i in range(cfg["count"]):
        try:
            result = enroll(tpm, EnrollOptions(cfg["directory"], cafile=cfg["cafile"], key_out=workdir / f"{i}.key",
                                               cert_out=workdir / f"{i}.cert", overwrite=True))
            out.append(result.timings)
        except tpmtls.TpmtlsError as e:
            errors.append(str(e)[:200])
    return {"timings": out, "errors": errors}


def _one_address_limits() -> tuple[Any, Any]:
    """Settings and front limits with per-address rates raised: all workers share 127.0.0.1."""
    from tpmtls.enroll.acme_server import Settings
    from tpmtls.enroll.ratelimit import Rate
    from tpmtls.enroll.serve import Limits

    return (Settings(new_accounts=Rate(10000.0, 100000), attestations=Rate(10000.0, 100000)),
            Limits(requests=Rate(10000.0, 100000)))


def run(args: argparse.Namespace) -> int:
    import tpmtls
    from tpmtls.enroll.acme_server import EnrollApp, EnrollServer
    from tpmtls.enroll.attest_policy import PcrPolicy, parse_selection
    from tpmtls.lab.ekca import EkCa, ek_machine
    from tpmtls.pki.ca import FileCA
    from tpmtls.tpm.attest import read_pcrs

    from .lab import environment

    points = _csv_ints(args.machines)
    dbs = [d.strip() for d in args.db.split(",") if d.strip()]
    if not dbs or set(dbs) - {"sqlite", "postgresql"}:
        raise SystemExit("--db: a comma-separated list of sqlite, postgresql")
    results: list[dict[str, Any]] = []
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tpmtls-bench-enroll-")))
        ek_ca = EkCa(tmp / "ekca")
        machines = []
        for i in range(max(points)):
            m = ek_machine(tmp / f"m{i}", ek_ca)
            stack.callback(m.stop)
            machines.append(m)
        FileCA.init(tmp / "ca", "bench CA")
        with tpmtls.Pool(machines[0].tcti) as pool:
            values = read_pcrs(tpmtls.connect(pool=pool), parse_selection("sha256:0,1,2,3,4,5,6,7"))
        (tmp / "policy.json").write_bytes(PcrPolicy.from_values(values).to_json())
        urls = {"sqlite": f"sqlite:{tmp / 'enroll.db'}"}
        if "postgresql" in dbs:
            from tpmtls.lab.postgres import Postgres

            urls["postgresql"] = stack.enter_context(Postgres()).url
        settings, limits = _one_address_limits()
        servers = {}
        for db in dbs:
            app = EnrollApp(tmp / "ca", ek_ca.bundle(tmp / "roots.pem"), tmp / "policy.json", db=urls[db],
                            settings=settings)
            stack.callback(app.close)
            servers[db] = stack.enter_context(EnrollServer(app, limits=limits))
        print(f"{'db':>10} {'machines':>8} {'enrollments':>11} {'per min':>8} {'client ms':>10} {'TPM ms':>7} "
              f"{'server ms':>10} {'other ms':>9} {'errors':>6}")
        for m in points:
            for db in dbs:
                server = servers[db]
                app = server.app
                before_seconds, before_issued = app.stats.seconds, app.stats.issued
                procs = []
                start = time.perf_counter()
                for i in range(m):
                    wd = tmp / f"w-{db}-{m}-{i}"
                    wd.mkdir()
                    cfg = {"tcti": machines[i].tcti, "directory": server.directory_url,
                           "cafile": str(tmp / "ca" / "ca.crt"), "count": args.count, "workdir": str(wd)}
                    procs.append(subprocess.Popen([sys.executable, "-m", "benchmarks.enroll", "worker", json.dumps(cfg)],
                                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                                  env={**os.environ, **machines[i].env}))
                outs = []
                for p in procs:
                    stdout, stderr = p.communicate(timeout=args.count * 60 + 120)
                    if p.returncode != 0:
                        raise SystemExit(f"enroll worker failed: {stderr.strip().splitlines()[-1:]}")
                    outs.append(json.loads(stdout.strip().splitlines()[-1]))
                wall = time.perf_counter() - start
                timings = [t for o in outs for t in o["timings"]]
                errors = [e for o in outs for e in o["errors"]]
                n = len(timings)
                issued = app.stats.issued - before_issued
                client = sum(t["total"] for t in timings) / max(n, 1) * 1000
                tpm_ms = sum(t["tpm"] for t in timings) / max(n, 1) * 1000
                server_ms = (app.stats.seconds - before_seconds) / max(n, 1) * 1000
                row = {"db": db, "machines": m, "enrollments": n, "issued": issued, "wall_s": round(wall, 3),
                       "per_minute": round(n / wall * 60, 1), "client_ms": round(client, 1), "tpm_ms": round(tpm_ms, 1),
                       "server_ms": round(server_ms, 1), "other_ms": round(client - tpm_ms - server_ms, 1),
                       "errors": len(errors), "error_samples": errors[:3]}
                results.append(row)
                print(f"{db:>10} {m:>8} {n:>11} {row['per_minute']:>8} {row['client_ms']:>10} {row['tpm_ms']:>7} "
                      f"{row['server_ms']:>10} {row['other_ms']:>9} {len(errors):>6}")
        if "sqlite" in dbs and "postgresql" in dbs:
            print()
            for m in points:
                lite = next(r for r in results if r["db"] == "sqlite" and r["machines"] == m)
                pg = next(r for r in results if r["db"] == "postgresql" and r["machines"] == m)
                ratio = pg["per_minute"] / lite["per_minute"] if lite["per_minute"] else 0.0
                print(f"{m} machine(s): PostgreSQL at {ratio:.2f}x SQLite's enrollments/min")
    print("\nclient ms: one enrollment as the client sees it (attestation + ACME); TPM ms: its TPM commands "
          "(EK, AK, ActivateCredential, quote, key, Certify, CSR signature); server ms: request handling in "
          "enroll-server per enrollment (all machines share it); other: TLS, HTTP, JOSE, client CPU, waiting.")
    if args.json:
        Path(args.json).write_text(json.dumps({"env": environment(), "count": args.count, "results": results},
                                              indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("enroll", help="attested enrollments per minute (ACME device-attest-01), one and several machines")
    p.add_argument("--machines", default="1,4", help="machine counts to measure (default 1,4)")
    p.add_argument("--count", type=int, default=10, help="enrollments per machine per point (default 10)")
    p.add_argument("--db", default="sqlite,postgresql", help="state databases to compare (default sqlite,postgresql)")
    p.add_argument("--json", metavar="FILE")
    p.set_defaults(func=run)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "worker":
        print(json.dumps(worker(json.loads(sys.argv[2]))))
        sys.exit(0)
    sys.exit("usage: python -m benchmarks enroll [--machines 1,4] [--count N] [--db sqlite,postgresql] [--json FILE]")
