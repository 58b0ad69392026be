"""The package type-checks (py.typed promises users precise hints)."""

from __future__ import annotations

import subprocess
import sys

from support import ROOT


def test_mypy_is_clean():
    """mypy with the project's configuration (pyproject.toml: Python 3.10, the package)."""
    proc = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
