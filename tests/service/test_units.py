"""The systemd units as `make install` writes them: `systemd-analyze verify` finds nothing to say,
and `systemd-analyze security` rates the two proxies at most 2.5 (docs/services.md, "Hardening")."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from support import ROOT
from support.commands import require

# Templates are verified as one instance, named as the docs name them.
INSTANCE = {"tpmtls-daemon-proxy@": "docker1.example:2376"}
DEFAULT_INSTANCE = "registry.example:5000"


def _unit_files() -> list[str]:
    return sorted(p.name for p in (ROOT / "helpers").glob("tpmtls-*") if p.suffix in (".service", ".socket", ".timer"))


@pytest.fixture(scope="module")
def units(tmp_path_factory) -> Path:
    """The units rendered by helpers/install-system.sh with BINDIR = this Python's venv, so
    verify's check that ExecStart= exists is made against a real tpmtls command."""
    out = tmp_path_factory.mktemp("units")
    subprocess.run([str(ROOT / "helpers" / "install-system.sh"), "units", str(out)], check=True, timeout=60,
                   env={"PATH": "/usr/bin:/bin", "BINDIR": str(Path(sys.executable).parent)})
    assert sorted(p.name for p in out.iterdir()) == _unit_files()
    return out


def test_systemd_analyze_verify_is_clean(units):
    require("systemd-analyze")
    # FILE:NAME loads a template under an instance's name (a path with ':' in it would be split)
    args = []
    for f in _unit_files():
        template, _, suffix = f.partition("@.")
        instance = f"{template}@{INSTANCE.get(template + '@', DEFAULT_INSTANCE)}.{suffix}" if suffix else None
        args.append(f"{units / f}:{instance}" if instance else str(units / f))
    assert len(args) >= 6
    proc = subprocess.run(["systemd-analyze", "verify", *args], capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


@pytest.mark.parametrize("unit", ["tpmtls-proxy@.service", "tpmtls-daemon-proxy@.service"])
def test_proxies_are_rated_at_most_2_5(units, unit):
    require("systemd-analyze")
    proc = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", "--threshold=25",
                           str(units / unit)], capture_output=True, text=True, timeout=120)
    level = re.search(r"Overall exposure level for \S+: (\d+\.\d)", proc.stdout)
    assert level, proc.stdout[-2000:] + proc.stderr
    assert float(level.group(1)) <= 2.5 and proc.returncode == 0, proc.stdout


def test_proxies_run_unprivileged_behind_socket_units():
    """What the ratings rest on, said plainly: a dedicated user in the tss group, no capabilities,
    ports and sockets opened by systemd, readiness after the upstream check."""
    for name in ("tpmtls-proxy@", "tpmtls-daemon-proxy@"):
        service = (ROOT / "helpers" / f"{name}.service").read_text()
        for line in ("Type=notify", "User=tpmtls", "SupplementaryGroups=tss", "CapabilityBoundingSet=",
                     "NoNewPrivileges=yes", "DeviceAllow=/dev/tpmrm0 rw", f"Requires={name}%i.socket"):
            assert re.search(rf"^{re.escape(line)}$", service, re.M), f"{name}.service: {line}"
        assert "--listen fd://" in service and "AmbientCapabilities" not in service
    proxy_socket = (ROOT / "helpers" / "tpmtls-proxy@.socket").read_text()
    assert re.search(r"^ListenStream=127\.0\.0\.1:5000$", proxy_socket, re.M)
    daemon_socket = (ROOT / "helpers" / "tpmtls-daemon-proxy@.socket").read_text()
    for line in ("ListenStream=/run/tpmtls/%i/docker.sock", "SocketMode=0660", "SocketGroup=docker"):
        assert re.search(rf"^{re.escape(line)}$", daemon_socket, re.M), line
