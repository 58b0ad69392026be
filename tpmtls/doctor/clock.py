"""Doctor's look at the clock: certificates are only as valid as the time they are checked at."""

from __future__ import annotations

import datetime
import shutil
import subprocess
from pathlib import Path

from .findings import FAILED, INFO, OK, WARNING, Finding

# tpmtls 0.1.0's release: a clock before it is certainly wrong (a floor that needs no network).
RELEASED = datetime.datetime(2026, 11, 29, tzinfo=datetime.timezone.utc)


def check(not_before: list[tuple[datetime.datetime, str]], now: datetime.datetime | None = None) -> list[Finding]:
    """The clock is after tpmtls's release and after every certificate's notBefore doctor saw;
    and, where systemd keeps time, synchronized."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    shown = f"{now:%Y-%m-%d %H:%M} UTC"
    floors = [(RELEASED, "tpmtls's release")] + not_before
    latest, what = max(floors, key=lambda f: f[0])
    if now < latest:
        return [Finding("clock", FAILED, shown, f"the clock says {shown}, before {what} ({latest:%Y-%m-%d %H:%M} UTC): "
                        "TLS peers and tpmtls judge certificates by it; set the time (timedatectl set-ntp true)")]
    synced = _synchronized()
    if synced is False:
        return [Finding("clock", WARNING, shown, f"{shown}, not synchronized (timedatectl): certificate validity and ACME "
                        "depend on the time; timedatectl set-ntp true")]
    state = "synchronized" if synced else "synchronization not known (no systemd here)"
    return [Finding("clock", OK if synced else INFO, shown, f"{shown}, after every certificate's start; {state}")]


def _synchronized() -> bool | None:
    """systemd's view (timedatectl), None where systemd does not run."""
    if not Path("/run/systemd/system").is_dir() or shutil.which("timedatectl") is None:
        return None
    try:
        out = subprocess.run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"], capture_output=True,
                             text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return {"yes": True, "no": False}.get(out)
