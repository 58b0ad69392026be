"""Runs `python -m benchmarks` as a user would and reads its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from support import ROOT


def bench(*args: str, tmp_path: Path) -> dict:
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", *args, "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(out.read_text())
