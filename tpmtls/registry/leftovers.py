"""Temp files of pulls and pushes that were killed: named after their process, swept by the next one.

A pull writes each blob to `.tmp-<pid>-…` beside its target and renames it when complete;
pushes of daemon images save them to `tpmtls-save-<pid>-…` in the temp dir. A process that
is killed leaves those; the next pull or push removes the ones whose process is gone.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

TMP_PREFIX = ".tmp-"  # + the pulling process's pid: a later pull removes those of dead pulls


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


SHARED_TMP_MIN_AGE = 3600.0  # seconds: leftovers in the shared temp dir older than this go


def sweep_stale(directory: Path, prefix: str = TMP_PREFIX, min_age: float = 0.0) -> int:
    """Remove temp files (or dirs) `<prefix><pid>-*` left by pulls that were killed; returns how many.

    Only names of that shape whose process is gone, and at least `min_age` seconds old:
    in a directory shared with other PID namespaces (/tmp and containers) a live process
    can look dead, so there only old leftovers go.
    """
    removed = 0
    try:
        entries = list(directory.iterdir())
    except OSError:
        return 0
    now = time.time()
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        pid_text = entry.name[len(prefix):].split("-", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid() or _alive(int(pid_text)):
            continue
        try:
            if min_age and now - entry.lstat().st_mtime < min_age:
                continue
        except OSError:
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed += 1
        except OSError:
            pass
    return removed
