"""Log lines: levels from -v/-q, journald's priority prefixes and no timestamp when stderr is the
journal's ($JOURNAL_STREAM names its device:inode), the time first everywhere else."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys

import pytest

from tpmtls._log import level_for

SCRIPT = """
import logging, sys
from tpmtls._log import setup
setup("tpmtls proxy", int(sys.argv[1]))
log = logging.getLogger("tpmtls.proxy")
log.debug("debug line")
log.info("listening on http://127.0.0.1:5000")
log.warning("upstream check failed:\\nsecond line")
log.error("cannot reach the TPM")
"""


def _run(tmp_path, verbosity: int, journal: bool) -> list[str]:
    err = tmp_path / "stderr"
    with open(err, "wb") as f:
        env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
        if journal:  # what systemd sets for a service whose stderr is the journal (systemd.exec(5))
            st = os.fstat(f.fileno())
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        subprocess.run([sys.executable, "-c", SCRIPT, str(verbosity)], stderr=f, env=env, check=True, timeout=60)
    return err.read_text().splitlines()


def test_under_journald_each_line_carries_its_priority_and_no_time(tmp_path):
    assert _run(tmp_path, 0, journal=True) == [
        "<6>listening on http://127.0.0.1:5000",
        "<4>upstream check failed: second line",  # one entry: a newline would start another
        "<3>cannot reach the TPM",
    ]


def test_elsewhere_lines_start_with_the_time_and_say_the_level(tmp_path):
    lines = _run(tmp_path, 0, journal=False)
    assert [re.sub(r"^\d\d:\d\d:\d\d ", "", line) for line in lines] == [
        "tpmtls proxy: listening on http://127.0.0.1:5000",
        "tpmtls proxy: warning: upstream check failed:",
        "second line",
        "tpmtls proxy: error: cannot reach the TPM",
    ]
    assert all(re.match(r"\d\d:\d\d:\d\d tpmtls proxy: ", line) for line in lines if "tpmtls" in line)


def test_a_journal_stream_that_is_not_stderr_is_ignored(tmp_path, monkeypatch):
    """A child of a service inherits JOURNAL_STREAM with its stderr redirected elsewhere."""
    err = tmp_path / "stderr"
    with open(err, "wb") as f:
        env = {**os.environ, "JOURNAL_STREAM": "1:1"}
        subprocess.run([sys.executable, "-c", SCRIPT, "0"], stderr=f, env=env, check=True, timeout=60)
    assert not err.read_text().startswith("<")


@pytest.mark.parametrize(("verbosity", "shown"), [
    (1, ["debug line", "listening", "upstream", "cannot reach"]),
    (0, ["listening", "upstream", "cannot reach"]),
    (-1, ["upstream", "cannot reach"]),
    (-2, ["cannot reach"]),
])
def test_v_and_q_set_the_level(tmp_path, verbosity, shown):
    lines = [line for line in _run(tmp_path, verbosity, journal=True) if line.startswith("<")]
    assert [line[3:].split()[0] for line in lines] == [s.split()[0] for s in shown]


def test_level_mapping():
    assert [level_for(v) for v in (3, 1, 0, -1, -2, -5)] == [
        logging.DEBUG, logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.ERROR]
