"""Logging for the commands: the standard `logging` module, one line per event on stderr.

Library modules log to `logging.getLogger("tpmtls.<module>")` and configure nothing (a
library leaves handlers to its application). The commands call `setup()` once: level from
-v/-q, and a format that suits where stderr goes. Under journald (systemd sets
$JOURNAL_STREAM to stderr's device:inode, systemd.exec(5)) a line carries no timestamp —
the journal stamps it — and starts with its syslog priority, `<3>` for an error, which
journald reads (sd-daemon(3)); elsewhere it starts with the command's name, and for
long-running commands (the proxies, the enrollment agent and server) with the time before it.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import TextIO

# logging level → syslog priority (sd-daemon(3): SD_ERR is <3>, SD_WARNING <4>, …)
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


def level_for(verbosity: int) -> int:
    """-v → DEBUG, nothing → INFO, -q → WARNING, -qq → ERROR (verbosity = #v − #q)."""
    return {1: logging.DEBUG, 0: logging.INFO, -1: logging.WARNING}.get(
        verbosity, logging.DEBUG if verbosity > 0 else logging.ERROR)


def to_journal(stream: TextIO) -> bool:
    """Whether `stream` is the journal's (its device:inode is what systemd put in $JOURNAL_STREAM)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    if not expected:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


class JournalFormatter(logging.Formatter):
    """`<priority>message`, one physical line per record (a newline would start a new entry)."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)
        return f"<{priority}>" + super().format(record).replace("\n", " ")


class TerminalFormatter(logging.Formatter):
    """`[HH:MM:SS ]prog: [warning: ]message`: the time for long-running commands, whose lines are
    read later; the level unless it is info."""

    def __init__(self, prog: str, timestamps: bool) -> None:
        super().__init__()
        self.prog, self.timestamps = prog, timestamps

    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        stamp = time.strftime("%H:%M:%S ", time.localtime(record.created)) if self.timestamps else ""
        return f"{stamp}{self.prog}: {level}{super().format(record)}"


def setup(prog: str, verbosity: int = 0, stream: TextIO | None = None, *, timestamps: bool = True) -> logging.Logger:
    """Configure the "tpmtls" logger for one command and return it (idempotent)."""
    out = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(out)
    handler.setFormatter(JournalFormatter() if to_journal(out) else TerminalFormatter(prog, timestamps))
    logger = logging.getLogger("tpmtls")
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(level_for(verbosity))
    logger.propagate = False  # the application's root logger, if any, is not ours to feed
    return logger
