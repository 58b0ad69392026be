"""`python -m benchmarks daemon` runs and reports what it promises (numbers go in docs/daemon.md)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from support import ROOT
from support.commands import require


@pytest.mark.machine  # the benchmark starts dockerd
def test_daemon_benchmark_compares_keys_and_resumption(tmp_path):
    require("dockerd", "swtpm", "tpm2-abrmd")
    out = tmp_path / "daemon.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "daemon", "--threads", "1", "--seconds", "0.5",
                           "--connections", "5", "--json", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert {r["key"] for r in data["api"]} == {"software", "tpm"}
    for r in data["api"]:
        assert r["errors"] == 0 and r["calls_per_s"] > 0, r
        # one TPM signature per pooled connection, not per call
        assert r["tpm_signatures"] == (1 if r["key"] == "tpm" else 0), r
    by = {r["resume"]: r for r in data["proxy"]}
    assert by[False]["errors"] == by[True]["errors"] == 0
    assert by[False]["tpm_signatures"] == 5  # a full handshake, one signature, per new connection
    assert by[True]["tpm_signatures"] == 0 and by[True]["resumed"] == 5  # resumed: the TPM is not asked
