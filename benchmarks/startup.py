"""`python -m benchmarks startup`: how long the commands take before they do anything.

Each command runs `--runs` times (best and median wall time, CPU time of the best run, and
the modules it imported, from `python -X importtime`), from compiled bytecode as an
installed package runs (a private PYTHONPYCACHEPREFIX, filled by a first untimed run).
`--against DIR` runs the same commands from another checkout of tpmtls (say, the main
branch) in the same run, for the ratio; `skopeo --version` is there as what a Go
binary's start costs.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .lab import environment

HERE = Path(__file__).resolve().parent.parent
COMMANDS = {
    "python -c pass": ["-c", "pass"],
    "import tpmtls": ["-c", "import tpmtls"],
    "tpmtls-push --help": ["-m", "tpmtls.cli.push", "--help"],
    "tpmtls-pull --help": ["-m", "tpmtls.cli.pull", "--help"],
    "docker-credential-tpmtls version": ["-m", "tpmtls.cli.credential_helper", "version"],
    "docker-credential-tpmtls list": ["-m", "tpmtls.cli.credential_helper", "list"],
    "import tpmtls.registry.push": ["-c", "import tpmtls.registry.push"],
    "tpmtls --help": ["-m", "tpmtls", "--help"],
}


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(argv)} failed in {cwd}")
    return time.monotonic() - t0, usage.ru_utime + usage.ru_stime


def _modules(argv: list[str], cwd: Path, env: dict[str, str]) -> int:
    proc = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)
    return len({m.group(1) for m in re.finditer(r"import time:\s+\d+ \|\s+\d+ \|\s*(\S+)", proc.stderr)})


def measure(tree: Path, runs: int, env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Each command from `tree` (its tpmtls first on the path: python -m runs from that directory)."""
    out = {}
    for name, args in COMMANDS.items():
        argv = [sys.executable, *args]
        _run(argv, tree, env)  # bytecode cache filled, files in the page cache
        times = [_run(argv, tree, env) for _ in range(runs)]
        best = min(times)
        out[name] = {"best_s": round(best[0], 3), "median_s": round(statistics.median(t[0] for t in times), 3),
                     "cpu_s": round(best[1], 3), "modules": _modules(argv, tree, env)}
        print(f"  {tree.name:14} {name:34} best {best[0]:.3f} s  median {out[name]['median_s']:.3f} s  "
              f"CPU {best[1]:.3f} s  {out[name]['modules']} modules", flush=True)
    return out


def startup(args: Any) -> int:
    trees = [HERE] + ([Path(args.against).resolve()] if args.against else [])
    with tempfile.TemporaryDirectory(prefix="tpmtls-bench-startup-") as work:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH")}
        env.update(PYTHONPYCACHEPREFIX=str(Path(work) / "pycache"), XDG_CACHE_HOME=str(Path(work) / "cache"),
                   TPMTLS_CREDENTIALS_FILE=str(Path(work) / "credentials.json"))
        results = {str(tree): measure(tree, args.runs, env) for tree in trees}
        skopeo = min(_run(["skopeo", "--version"], HERE, env)[0] for _ in range(args.runs))
    ours = results[str(HERE)]
    theirs = results.get(str(trees[-1])) if len(trees) > 1 else None
    print()
    head = "| command | this tree: best s | CPU s | modules |"
    if theirs:
        head += f" {trees[-1].name}: best s | CPU s | modules | speed-up |"
    print(head)
    print("|---|" + "---:|" * (head.count("|") - 2))
    for name in COMMANDS:
        row = f"| `{name}` | {ours[name]['best_s']:.3f} | {ours[name]['cpu_s']:.3f} | {ours[name]['modules']} |"
        if theirs:
            t = theirs[name]
            row += f" {t['best_s']:.3f} | {t['cpu_s']:.3f} | {t['modules']} | {t['best_s'] / ours[name]['best_s']:.2f}x |"
        print(row)
    print(f"\nskopeo --version (a Go binary): best {skopeo:.3f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"env": environment(), "runs": args.runs, "trees": [str(t) for t in trees],
                                               "results": results, "skopeo_version_s": round(skopeo, 3)}, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("startup", help="start-up of the commands (imports), optionally against another checkout")
    p.add_argument("--runs", type=int, default=10, help="runs per command (best and median reported)")
    p.add_argument("--against", metavar="DIR", help="another checkout of tpmtls to compare with (its tpmtls/ first)")
    p.add_argument("--json", metavar="FILE")
    p.set_defaults(func=startup)
