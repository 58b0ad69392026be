"""`python -m benchmarks enroll` runs and reports what it promises (numbers go in docs/enrollment.md, not asserts)."""

from __future__ import annotations

import json
import subprocess
import sys

from support import ROOT
from support.commands import require


def test_enroll_benchmark_reports_tpm_and_server_time(tmp_path):
    require("swtpm", "swtpm_setup", "swtpm_localca", "tpm2-abrmd")
    out = tmp_path / "enroll.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "enroll", "--machines", "1,2", "--count", "2",
                           "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "per min" in proc.stdout and "TPM ms" in proc.stdout and "server ms" in proc.stdout
    data = json.loads(out.read_text())
    assert [(r["db"], r["machines"]) for r in data["results"]] == [("sqlite", 1), ("postgresql", 1), ("sqlite", 2),
                                                                   ("postgresql", 2)]
    assert "PostgreSQL at " in proc.stdout and "x SQLite's enrollments/min" in proc.stdout
    for r in data["results"]:
        assert r["errors"] == 0 and r["enrollments"] == r["issued"] == 2 * r["machines"], r
        assert r["per_minute"] > 0 and r["tpm_ms"] > 0 and r["server_ms"] > 0
