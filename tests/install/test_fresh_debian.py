"""The README's commands on a fresh Debian 12: a scratch root made by debootstrap, entered with
chroot in a mount namespace of its own (nothing of the host is changed). `make install` installs
the runtime stack only and a working system-wide tpmtls; the proxy unit it installs runs under a
real systemd (the root booted with systemd-nspawn, its own network): socket-activated, READY
after the upstream check, as user tpmtls, confined; doctor there speaks for real users and
groups; `make quickstart` runs green without docker.io, nginx or skopeo; the test stack leaves a
Docker CE the machine has alone. (docs/install.md, "What each command installs"; docs/services.md.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import ROOT
from support.commands import require

SUITE = "bookworm"
# What the quickstart and the install must never bring (the test stack's peers).
TEST_ONLY = ("docker.io", "nginx-light", "nginx-common", "skopeo")
COMMANDS = ("tpmtls", "tpmtls-push", "tpmtls-pull", "docker-credential-tpmtls")
# debootstrap and two installs from the network: minutes, not the suite's default 300 s per test
pytestmark = pytest.mark.timeout(1800)


def _mirror() -> str:
    """The Debian mirror this machine's apt uses (deb822 or one-line sources), else deb.debian.org."""
    for source in [Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")]:
        if source.is_file():
            for line in source.read_text().splitlines():
                words = line.split()
                if words[:1] == ["URIs:"] and "security" not in words[1]:
                    return words[1]
                if words[:1] == ["deb"] and "security" not in line:
                    return next(w for w in words[1:] if "://" in w)
    return "http://deb.debian.org/debian"


class ScratchRoot:
    """A debootstrapped Debian with this checkout in /src; commands run chrooted, as root."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def run(self, command: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        """`command` (sh) inside the root. /proc is mounted in a private mount namespace, gone when
        it exits; the host's pip wheel cache is lent so tpm2-pytss is not compiled again, and the
        host's downloaded .debs are seen through an overlay (apt's writes land beside the root)
        so the packages `make test` fetched for the host are not fetched again."""
        cache = Path.home() / ".cache" / "pip"
        cache.mkdir(parents=True, exist_ok=True)
        (self.path / "root/.cache/pip").mkdir(parents=True, exist_ok=True)
        debs = self.path.parent / "apt-overlay"
        for d in ("upper", "work"):
            (debs / d).mkdir(parents=True, exist_ok=True)
        archives = self.path / "var/cache/apt/archives"
        overlay = (f"mount -t overlay overlay -o lowerdir=/var/cache/apt/archives,upperdir={debs}/upper,"
                   f"workdir={debs}/work {archives} && " if Path("/var/cache/apt/archives").is_dir() else "")
        setup = (f"mount -t proc proc {self.path}/proc && "
                 f"mount --bind {cache} {self.path}/root/.cache/pip && {overlay}"
                 f'exec chroot {self.path} /bin/sh -c "$0"')
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
               "LANG": "C.UTF-8", "PIP_CERT": "/root/host-ca.crt",
               "PIP_DISABLE_PIP_VERSION_CHECK": "1", "DEBIAN_FRONTEND": "noninteractive"}
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "--fork", "sh", "-c", setup, command],
                              capture_output=True, text=True, env=env, timeout=timeout)

    def ok(self, command: str, timeout: float = 900) -> str:
        proc = self.run(command, timeout)
        assert proc.returncode == 0, f"{command!r} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-4000:]}"
        return proc.stdout + proc.stderr

    def installed(self, *packages: str) -> set[str]:
        out = self.run("dpkg-query -W -f='${Package} ${Status}\\n' " + " ".join(packages) + " 2>/dev/null").stdout
        return {line.split()[0] for line in out.splitlines() if line.endswith("install ok installed")}


def _copy_checkout(dest: Path) -> None:
    skip = {".venv", ".git", "build", "dist", ".mypy_cache", ".pytest_cache", ".ruff_cache", "__pycache__"}
    shutil.copytree(ROOT, dest, ignore=lambda d, names: [n for n in names if n in skip or n.endswith((".so", ".egg-info"))])


@pytest.fixture(scope="module")
def fresh_debian(tmp_path_factory) -> ScratchRoot:
    require("debootstrap", "unshare", "chroot")
    path = tmp_path_factory.mktemp("debian") / "root"
    # minbase and systemd, dbus: what a Debian machine has, and what lets the root boot
    proc = subprocess.run(["debootstrap", "--variant=minbase", "--include=systemd,systemd-sysv,dbus", SUITE, str(path),
                           _mirror()],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    shutil.copy2("/etc/resolv.conf", path / "etc/resolv.conf")
    # The host's CA bundle: PyPI may be reached through a proxy only this bundle trusts.
    shutil.copy2("/etc/ssl/certs/ca-certificates.crt", path / "root/host-ca.crt")
    _copy_checkout(path / "src")
    root = ScratchRoot(path)
    root.ok("apt-get update -qq && apt-get install -y -qq --no-install-recommends make >/dev/null")
    return root


@pytest.fixture(scope="module")
def installed(fresh_debian) -> str:
    """`make install` in the fresh root, once; its output."""
    return fresh_debian.ok("make -C /src install")


def test_make_install_installs_the_runtime_stack_and_a_working_tpmtls(fresh_debian, installed):
    assert "units in /usr/local/lib/systemd/system (none enabled)" in installed
    assert not fresh_debian.installed(*TEST_ONLY, "swtpm", "tpm2-abrmd", "docker-registry")
    assert fresh_debian.installed("libtss2-dev", "libssl-dev", "tpm-udev") == {"libtss2-dev", "libssl-dev", "tpm-udev"}
    for command in COMMANDS:
        target = os.readlink(fresh_debian.path / "usr/local/bin" / command)
        assert target == f"/opt/tpmtls/bin/{command}"
    # the service user can run what the units start (the venv is readable, not under /root)
    version = fresh_debian.ok("runuser -u tpmtls -- /usr/local/bin/tpmtls --version")
    assert version.startswith("tpmtls ")
    assert "tss" in fresh_debian.ok("id -nG tpmtls").split()
    units = fresh_debian.path / "usr/local/lib/systemd/system"
    assert "ExecStart=/usr/local/bin/tpmtls proxy" in (units / "tpmtls-proxy@.service").read_text()
    # again: an upgrade in place, same result
    assert "units in /usr/local/lib/systemd/system" in fresh_debian.ok("make -C /src install")


def test_make_quickstart_needs_no_docker_nginx_or_skopeo(fresh_debian):
    out = fresh_debian.ok("make -C /src quickstart", timeout=1200)
    assert "[9/9]" in out
    assert fresh_debian.installed(*TEST_ONLY) == set()
    assert fresh_debian.installed("swtpm", "tpm2-abrmd", "docker-registry") == {"swtpm", "tpm2-abrmd", "docker-registry"}


# ---- the installed units under a real systemd ----------------------------------------------------

# Run in the booted root's network namespace, with this checkout's Python: a software TPM and an
# mTLS registry there, a TPM key and its certificate; prints what it made, serves until stdin closes.
PEERS = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from support.peers import Pki
from tpmtls.lab import Registry
from tpmtls.lab.swtpm import SwTpm
from tpmtls.tpm import connect
work = Path(sys.argv[1])
pki = Pki(work / "pki")
swtpm = SwTpm(work / "swtpm").start()
key = connect(swtpm.tcti).create_key("ecc-p256", work / "client.key")
cert = pki.issue(key.public_key(), "installed-proxy", "client.crt")
registry = Registry(pki.server_cert, pki.server_key, pki.ca_file, work / "registry").start()
print(json.dumps({"tcti": swtpm.tcti, "registry": registry.port, "ca": str(pki.ca_file), "cert": str(cert),
                  "key": str(work / "client.key")}), flush=True)
sys.stdin.read()
registry.stop()
swtpm.stop()
"""


class Booted:
    """The root booted by systemd-nspawn with a network of its own; commands entered with nsenter."""

    def __init__(self, root: ScratchRoot, log: Path) -> None:
        require("systemd-nspawn", "nsenter")
        self.root = root
        self._log = open(log, "wb")  # noqa: SIM115 - the container's console, for failures
        self.proc = subprocess.Popen(["systemd-nspawn", "-q", "-D", str(root.path), "--register=no", "--keep-unit",
                                      "--private-network", "-b", "--pipe"], stdout=self._log, stderr=self._log,
                                     stdin=subprocess.DEVNULL)
        self.init = 0
        try:
            for _ in range(1200):  # bounded: nspawn's child becomes the container's systemd
                children = subprocess.run(["ps", "--ppid", str(self.proc.pid), "-o", "pid=,comm="], capture_output=True,
                                          text=True, timeout=30).stdout.split()
                if children[1:2] == ["systemd"]:
                    self.init = int(children[0])
                    break
                assert self.proc.poll() is None, log.read_text(errors="replace")[-3000:]
                time.sleep(0.1)
            assert self.init, "systemd-nspawn started no systemd"
            state = ""
            for _ in range(120):  # bounded: until its D-Bus answers, then until the boot is done
                state = self.run("systemctl", "is-system-running", "--wait", timeout=300).stdout.strip()
                if state in ("running", "degraded"):
                    break
                time.sleep(0.5)
            assert state in ("running", "degraded"), f"{state!r}: {log.read_text(errors='replace')[-3000:]}"
        except BaseException:
            self.stop()
            raise

    def run(self, *argv: str, timeout: float = 120, net_only: bool = False) -> subprocess.CompletedProcess[str]:
        enter = ["nsenter", f"--net=/proc/{self.init}/ns/net"] if net_only else ["nsenter", "-t", str(self.init), "-a"]
        return subprocess.run([*enter, *argv], capture_output=True, text=True, timeout=timeout)

    def ok(self, *argv: str) -> str:
        proc = self.run(*argv)
        assert proc.returncode == 0, f"{argv}: {proc.stdout}{proc.stderr}"
        return proc.stdout

    def stop(self) -> None:
        """Power the container off; failing that, stop nspawn; failing that, kill both (by PID)."""
        if self.proc.poll() is None and self.init:
            self.run("systemctl", "poweroff", "--no-block", timeout=60)
        for stop in (lambda: None, self.proc.terminate, self.proc.kill):
            if self.proc.poll() is not None:
                break
            stop()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                continue
        if self.init:
            try:
                os.kill(self.init, 9)  # an init nspawn left behind (gone already, normally)
            except ProcessLookupError:
                pass
        self._log.close()


@pytest.fixture(scope="class")
def booted(fresh_debian, installed, tmp_path_factory):
    system = Booted(fresh_debian, tmp_path_factory.mktemp("nspawn") / "console.log")
    work = tmp_path_factory.mktemp("peers")
    peers = subprocess.Popen(["nsenter", f"--net=/proc/{system.init}/ns/net", sys.executable, "-c", PEERS, str(work),
                              str(ROOT / "tests")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert peers.stdout is not None
        made = json.loads(peers.stdout.readline())
        creds = fresh_debian.path / "root" / "creds"
        creds.mkdir(exist_ok=True)
        for name in ("ca", "cert", "key"):
            shutil.copy2(made[name], creds / Path(made[name]).name)
        yield system, made
    finally:
        if peers.stdin is not None:
            peers.stdin.close()
        peers.wait(timeout=120)
        system.stop()


def _drop_in(root: ScratchRoot, unit: str, text: str) -> None:
    d = root.path / "etc/systemd/system" / f"{unit}.d"
    d.mkdir(parents=True, exist_ok=True)
    (d / "test.conf").write_text(text)


class TestUnderSystemd:
    """The root booted once for these tests (and halted after them, before the test stack goes in)."""

    def test_the_installed_proxy_unit(self, fresh_debian, booted):
        system, made = booted
        instance = f"127.0.0.1:{made['registry']}"
        system.ok("/usr/local/bin/tpmtls", "certs", "install", instance, "--cert", "/root/creds/client.crt",
                  "--key", "/root/creds/client.key", "--ca", "/root/creds/ca.crt", "--group", "tpmtls")
        # the documented overrides: another loopback port, and the TPM to use
        _drop_in(fresh_debian, f"tpmtls-proxy@{instance}.socket", "[Socket]\nListenStream=\nListenStream=127.0.0.1:5999\n")
        _drop_in(fresh_debian, f"tpmtls-proxy@{instance}.service", f"[Service]\nEnvironment=TPMTLS_TCTI={made['tcti']}\n")
        system.ok("systemctl", "daemon-reload")
        system.ok("systemctl", "start", f"tpmtls-proxy@{instance}.socket")
        service = f"tpmtls-proxy@{instance}.service"
        assert system.ok("systemctl", "show", "-p", "ActiveState", "--value", service).strip() == "inactive"

        # the first connection starts the service; it answers once the upstream was checked
        got = system.run("curl", "-s", "-m", "60", "http://127.0.0.1:5999/v2/", net_only=True)
        assert (got.returncode, got.stdout) == (0, "{}"), got.stderr
        shown = dict(line.split("=", 1) for line in system.ok(
            "systemctl", "show", "-p", "ActiveState,SubState,Type,StatusText,MainPID", service).splitlines())
        assert (shown["ActiveState"], shown["SubState"], shown["Type"]) == ("active", "running", "notify")
        assert shown["StatusText"] == f"serving http://127.0.0.1:5999 for https://{instance}; upstream answered"
        status = system.ok("cat", f"/proc/{shown['MainPID']}/status")
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        uid = system.ok("id", "-u", "tpmtls").strip()
        tss = system.ok("getent", "group", "tss").split(":")[2]
        assert fields["Uid"].split()[0] == uid and tss in fields["Groups"].split()
        assert fields["CapEff"].strip() == "0000000000000000" and fields["NoNewPrivs"].strip() == "1"

        # its lines in the journal, with their priorities; nothing at warning or worse
        journal = [json.loads(line) for line in system.ok("journalctl", "-u", service, "-o", "json", "--no-pager").splitlines()]
        ours = [(e["PRIORITY"], e["MESSAGE"]) for e in journal if e.get("SYSLOG_IDENTIFIER") == "tpmtls"]
        assert ours[0][0] == "6" and ours[0][1].startswith("listening on http://127.0.0.1:5999")
        assert ("6", "GET /v2/ 200") in [(p, m.split(" up=")[0]) for p, m in ours]
        assert all(p == "6" for p, _ in ours)

        # the score with everything systemd knows at run time, then a clean stop
        score = system.ok("systemd-analyze", "security", "--no-pager", service).splitlines()[-1]
        assert float(score.split(": ")[1].split()[0]) <= 2.5, score
        system.ok("systemctl", "stop", service)
        assert system.ok("systemctl", "show", "-p", "Result", "--value", service).strip() == "success"


    def test_doctor_for_the_service_user_and_a_user_outside_tss(self, fresh_debian, booted):
        """On the booted system: the service user is in tss and may use a tss device; `nobody` is told
        how to get in. (A file stands in for the device: who may open it is what is checked.)"""
        system, made = booted
        system.ok("sh", "-c", "install -m 0660 -g tss /dev/null /run/tpmrm-standin")
        said = {}
        for user in ("tpmtls", "nobody"):
            proc = system.run("runuser", "-u", user, "--", "/usr/local/bin/tpmtls", "doctor", "--format", "json",
                              "--tcti", "device:/run/tpmrm-standin")
            assert proc.returncode == 1  # the stand-in is no TPM
            said[user] = [(f["subject"], f["status"], f["message"]) for f in json.loads(proc.stdout)["findings"]
                          if f["check"] == "group"]
        service = ("tpmtls", "ok", "the service user tpmtls is in tss")
        assert said["tpmtls"] == [("tpmtls", "ok", "tpmtls may use /run/tpmrm-standin (owner or member of tss)"), service]
        assert said["nobody"] == [("nobody", "failed", "nobody is not in the tss group, so cannot use /run/tpmrm-standin: "
                                                       "sudo usermod -aG tss nobody, then log in again"), service]
        kernel_before = _kernel_clock_synchronized()
        proc = system.run("runuser", "-u", "tpmtls", "--", "/usr/local/bin/tpmtls", "doctor", "--format", "json",
                          "--tcti", made["tcti"])
        report = json.loads(proc.stdout)
        assert proc.returncode == 0, report
        assert [f["status"] for f in report["findings"] if f["check"] in ("tpm", "keys")] == ["ok", "ok"]
        # the clock as systemd-timedated sees the kernel's (shared with the container): a warning, unless synced
        (status, message), = [(f["status"], f["message"]) for f in report["findings"] if f["check"] == "clock"]
        synced = system.ok("timedatectl", "show", "-p", "NTPSynchronized", "--value").strip()
        if _kernel_clock_synchronized() == kernel_before:  # (not synchronized by NTP in between)
            assert synced == ("yes" if kernel_before else "no")
        if synced == "no":
            assert status == "warning" and "not synchronized (timedatectl)" in message, message
            assert message.endswith("timedatectl set-ntp true"), message
        else:
            assert status == "ok" and message.endswith("after every certificate's start; synchronized"), message


def _kernel_clock_synchronized() -> bool:
    """systemd's own rule (ntp_synced()): the kernel's maximum error below 16 s."""
    import ctypes

    class Timex(ctypes.Structure):  # struct timex, up to status; the rest is room
        _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                    ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
                    ("rest", ctypes.c_byte * 256)]

    timex = Timex()
    assert ctypes.CDLL(None, use_errno=True).adjtimex(ctypes.byref(timex)) >= 0
    return timex.maxerror < 16_000_000


# ---- last: the whole test stack (its packages' services would start at the next boot) ----------

def test_the_test_stack_leaves_docker_ce_in_place(fresh_debian, tmp_path):
    """With Docker CE's CLI installed (a stand-in package of that name), Debian's docker.io, which
    declares Conflicts: docker-ce-cli, is not installed: apt would remove the user's Docker."""
    require("dpkg-deb")
    (tmp_path / "pkg/DEBIAN").mkdir(parents=True)
    (tmp_path / "pkg/DEBIAN/control").write_text(
        "Package: docker-ce-cli\nVersion: 5:28.2.0-1\nArchitecture: all\n"
        "Maintainer: tpmtls tests <tests@localhost>\nDescription: stand-in for Docker CE's CLI\n")
    subprocess.run(["dpkg-deb", "--build", str(tmp_path / "pkg"), str(fresh_debian.path / "tmp/docker-ce-cli.deb")],
                   check=True, capture_output=True, timeout=60)
    fresh_debian.ok("dpkg -i /tmp/docker-ce-cli.deb")
    out = fresh_debian.ok("/src/helpers/setup-debian.sh test")
    assert "not installing docker.io: it would remove docker-ce-cli" in out
    assert fresh_debian.installed("docker.io", "docker-ce-cli", "skopeo", "nginx-light") == {
        "docker-ce-cli", "skopeo", "nginx-light"}
