"""The bad-input sweep's machinery: commands found in the entry points' argparse parsers, bad values
by kind, and a runner that starts each case as its own process (as a user would), in a scratch
directory of its own, and records what a user would see and what was left on disk.

A case's process may run in a private mount namespace (`unshare -m`) where its `box/`
directory is a read-only or a full file system; nothing outside the process sees those mounts,
and they vanish with it. Every process runs under an address-space limit, so an input that is
read without bound (/dev/zero) fails the case instead of the machine.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from support import ROOT
from tpmtls.lab.process import child_env

#: Seconds one case may take; the bound a user would call "it hung".
CASE_TIMEOUT = 60.0
#: Address space a case's process may use (KiB): far above what a command needs.
ADDRESS_SPACE_KIB = 3_000_000
Arg = str | bytes


# ---- what a user runs ----------------------------------------------------------------------------

def entry_points() -> dict[str, str]:
    """Console scripts from pyproject.toml's [project.scripts]: name → 'module:function'."""
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    return dict(re.findall(r'^([A-Za-z0-9_.-]+)\s*=\s*"([^"]+)"', section, re.MULTILINE))


def entry_argv(entry: str) -> list[str]:
    """How to start an entry point: its installed script, else the interpreter on its module."""
    script = Path(sys.executable).parent / entry
    if script.exists():
        return [str(script)]
    module, func = entry_points()[entry].split(":")
    return [sys.executable, "-c", f"import sys; from {module} import {func}; sys.exit({func}())"]


def parser_of(entry: str) -> argparse.ArgumentParser | None:
    """The entry point's argparse parser, if its module has a `build_parser()`."""
    module = importlib.import_module(entry_points()[entry].split(":")[0])
    build = getattr(module, "build_parser", None)
    return build() if build is not None else None


@dataclass(frozen=True)
class Command:
    """One leaf command of an entry point and its arguments."""

    entry: str
    words: tuple[str, ...]  # e.g. ("key", "create")
    actions: tuple[argparse.Action, ...]

    @property
    def name(self) -> str:
        return " ".join((self.entry, *self.words))

    def option(self, dest: str) -> argparse.Action | None:
        return next((a for a in self.actions if a.dest == dest), None)


def commands(entry: str) -> list[Command]:
    """Every leaf command of an entry point, walked from its parser (a command added later is found too)."""
    parser = parser_of(entry)
    if parser is None:
        return [Command(entry, (), ())]
    found: list[Command] = []

    def walk(p: argparse.ArgumentParser, words: tuple[str, ...], inherited: tuple[argparse.Action, ...]) -> None:
        own = tuple(a for a in p._actions if not isinstance(a, (argparse._HelpAction, argparse._VersionAction,
                                                                 argparse._SubParsersAction)))
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or not subs[0].required:
            found.append(Command(entry, words, inherited + own))
        for sub in subs:
            for name, child in sub._name_parser_map.items():
                walk(child, words + (name,), inherited + tuple(a for a in own if a.option_strings))

    walk(parser, (), ())
    return [c for c in found if c.words or entry != "tpmtls"]


# ---- one case ------------------------------------------------------------------------------------

@dataclass
class Case:
    """One run of one command with one bad thing about it."""

    id: str
    entry: str
    argv: list[Arg]
    env: dict[str, str] = field(default_factory=dict)
    stdin: bytes = b""
    mount: str | None = None  # "ro": box/ read-only; "full": box/ a full tmpfs
    prepare: Callable[[Path, dict], None] | None = None  # makes the files it needs in its directory
    culprit: str | None = None  # text the one line must contain (what it names)
    interrupt: "Interrupt | None" = None
    wrap: list[str] = field(default_factory=list)  # a command put before the entry point (faketime …)
    ok_exit: bool = False  # exit 0 is right (an input the command may accept): only the rest is checked


@dataclass
class Interrupt:
    """Send `signum` once `ready()` says the command is in the middle of its work."""

    signum: int
    ready: Callable[[], bool]


@dataclass
class Result:
    case: Case
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    before: dict[str, str]
    after: dict[str, str]
    box_after: list[str]
    culprit: str | None = None

    @property
    def killed(self) -> bool:
        """SIGKILLed by the case (mid-transfer), as a user's machine or the OOM killer may."""
        return self.case.interrupt is not None and self.case.interrupt.signum == signal.SIGKILL

    @property
    def lines(self) -> list[str]:
        text = self.stdout if self.case.entry == "docker-credential-tpmtls" else self.stderr
        return [ln for ln in text.splitlines() if ln.strip()]

    def problems(self) -> list[str]:
        """What is wrong with how this failure reached the user (empty: clean)."""
        out: list[str] = []
        helper = self.case.entry == "docker-credential-tpmtls"
        if self.killed:  # no line is possible: what it leaves behind is what counts
            out = [] if self.returncode == 128 + signal.SIGKILL else [f"rc={self.returncode}, not killed"]
            changed = sorted(k for k in set(self.before) | set(self.after) if self.before.get(k) != self.after.get(k))
            return out + ([f"left or changed {changed[:4]}"] if changed else [])
        if self.returncode == 0 and not self.case.ok_exit:
            out.append("exit 0")
        if self.returncode == 70 or "internal error" in self.stderr + self.stdout:
            out.append("internal error")
        if self.returncode < 0:
            out.append(f"killed by signal {-self.returncode}")
        if "Traceback" in self.stderr or "Exception ignored" in self.stderr or "Fatal Python" in self.stderr:
            out.append("traceback")
        if self.returncode != 0 and len(self.lines) != 1:
            out.append(f"{len(self.lines)} lines")
        elif self.returncode != 0 and not helper and not self.lines[0].startswith(self.case.entry):
            out.append("a line not from the command")
        if helper and self.stderr.strip():
            out.append("stderr from the credential helper")
        if self.seconds >= CASE_TIMEOUT:
            out.append("hung")
        if self.returncode != 0 and self.culprit and self.lines and self.culprit not in self.lines[0]:
            out.append(f"does not name {self.culprit!r}")
        if self.returncode != 0:
            changed = sorted(k for k in set(self.before) | set(self.after) if self.before.get(k) != self.after.get(k))
            if changed:
                out.append(f"left or changed {changed[:4]}")
            if self.case.mount == "full" and set(self.box_after) - {".filler"}:
                out.append(f"left on the full disk: {sorted(set(self.box_after) - {'.filler'})}")
        return out


def snapshot(directory: Path) -> dict[str, str]:
    """Every file under `directory` (box/ excepted: its mount lives in the case's namespace) → digest."""
    out: dict[str, str] = {}
    for path in sorted(directory.rglob("*")):
        rel = str(path.relative_to(directory))
        if rel in ("box", "box.after", "cache") or rel.startswith(("box/", "cache/")):  # cache: resume data
            continue
        if path.is_symlink():
            out[rel] = "link:" + os.readlink(path)
        elif path.is_dir():
            out[rel] = "dir"
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return out


_MOUNTS = {
    # a read-only file system: what is there stays, nothing can be added
    "ro": 'mount -t tmpfs -o size=1m,mode=0755 none box && if [ -d box.seed ]; then cp -a box.seed/. box/; fi '
          '&& mount -o remount,ro box',
    # a full one: every byte taken by a filler before the command starts
    "full": 'mount -t tmpfs -o size=64k,mode=0755 none box && if [ -d box.seed ]; then cp -a box.seed/. box/; fi '
            '&& (cat /dev/zero > box/.filler 2>/dev/null; true)',
}


def resolve(value: Arg, world: dict[str, str]) -> Arg:
    """{name} → the world's value for it (text only; bytes pass as they are)."""
    if isinstance(value, bytes):
        return value
    return re.sub(r"\{([a-z_]+)\}", lambda m: world.get(m.group(1), m.group(0)), value)


def run_case(case: Case, directory: Path, world: dict[str, str]) -> Result:
    """Run `case` in `directory` (made here), as its own process, and record the outcome."""
    directory.mkdir(parents=True)
    (directory / "box").mkdir()
    (directory / "tmp").mkdir()
    world = {**world, "here": str(directory)}
    if case.prepare is not None:
        case.prepare(directory, world)
    env = child_env({"HOME": str(directory), "TMPDIR": str(directory / "tmp"), "XDG_CACHE_HOME": str(directory / "cache"),
                     "DOCKER_CONFIG": str(directory / "docker-config"), "TPMTLS_CERTS_D": str(directory / "certs.d"),
                     "DOCKER_CERTS_D": str(directory / "docker-certs.d"), "PYTHONDONTWRITEBYTECODE": "1",
                     "COLUMNS": "100"})
    for name in ("TPMTLS_DEBUG", "TPMTLS_TCTI", "TPM2TOOLS_TCTI", "DOCKER_HOST", "DOCKER_CERT_PATH"):
        env.pop(name, None)
    env.update({k: str(v) for k, v in world.items() if k.isupper()})  # the TPM's own variables
    env.update({k: str(resolve(v, world)) for k, v in case.env.items()})
    setup = f"ulimit -v {ADDRESS_SPACE_KIB}"
    if case.mount:
        setup += " && " + _MOUNTS[case.mount]
    script = f'{setup} || exit 99\n"$@"\nrc=$?\nls -A box > box.after 2>/dev/null\nexit $rc\n'
    argv: list[Arg] = (["unshare", "-m", "--propagation", "private"] if case.mount else []) + \
        ["sh", "-c", script, "sh", *case.wrap, *entry_argv(case.entry), *(resolve(a, world) for a in case.argv)]
    before = snapshot(directory)
    started = time.monotonic()
    proc = subprocess.Popen(argv, cwd=directory, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    if case.interrupt is not None:
        _interrupt_when_ready(proc, case.interrupt, started)
    try:
        out, err = proc.communicate(case.stdin, timeout=CASE_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
    seconds = time.monotonic() - started
    box = directory / "box.after"
    box_after = box.read_text().split() if box.exists() else []
    culprit = resolve(case.culprit, world) if case.culprit else None
    return Result(case, proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"), seconds, before,
                  snapshot(directory), box_after, str(culprit) if culprit else None)


def _interrupt_when_ready(proc: subprocess.Popen[bytes], interrupt: Interrupt, started: float) -> None:
    def watch() -> None:
        while proc.poll() is None and time.monotonic() - started < CASE_TIMEOUT / 2:
            if interrupt.ready():
                # the command itself, not the sh that waits for it: the last process of the session
                children = _descendants(proc.pid)
                target = children[-1] if children else proc.pid
                os.kill(target, interrupt.signum)
                return
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    queue = [pid]
    while queue:
        parent = queue.pop()
        try:
            kids = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            continue
        for k in map(int, kids):
            found.append(k)
            queue.append(k)
    return found


def short_id(text: str) -> str:
    """A pytest id from free text: printable ASCII, bounded."""
    text = re.sub(r"[^A-Za-z0-9_.:=+@/ -]+", "_", text)
    return text[:80]


def ids(cases: list[Case]) -> Iterator[str]:
    seen: dict[str, int] = {}
    for c in cases:
        n = seen.get(c.id, 0)
        seen[c.id] = n + 1
        yield c.id if n == 0 else f"{c.id}#{n}"


def rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


__all__ = ["Case", "Command", "Interrupt", "Result", "commands", "entry_points", "run_case", "CASE_TIMEOUT"]
