"""The README's commands on a fresh Debian 12: a scratch root made by debootstrap, entered with
chroot in a mount namespace of its own (nothing of the host is changed). `make install` installs
the runtime stack only and a working system-wide tpmtls; `make quickstart` runs green without
docker.io, nginx or skopeo; the test stack leaves a Docker CE the machine has alone.
(docs/install.md, "What each command installs".)"""

from __future__ import annotations

import os
import shutil
import subprocess
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
        it exits; the host's pip wheel cache is lent so tpm2-pytss is not compiled again."""
        cache = Path.home() / ".cache" / "pip"
        cache.mkdir(parents=True, exist_ok=True)
        (self.path / "root/.cache/pip").mkdir(parents=True, exist_ok=True)
        setup = (f"mount -t proc proc {self.path}/proc && "
                 f"mount --bind {cache} {self.path}/root/.cache/pip && "
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
    proc = subprocess.run(["debootstrap", "--variant=minbase", SUITE, str(path), _mirror()],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    shutil.copy2("/etc/resolv.conf", path / "etc/resolv.conf")
    # The host's CA bundle: PyPI may be reached through a proxy only this bundle trusts.
    shutil.copy2("/etc/ssl/certs/ca-certificates.crt", path / "root/host-ca.crt")
    _copy_checkout(path / "src")
    root = ScratchRoot(path)
    root.ok("apt-get update -qq && apt-get install -y -qq --no-install-recommends make >/dev/null")
    return root


def test_make_install_installs_the_runtime_stack_and_a_working_tpmtls(fresh_debian):
    out = fresh_debian.ok("make -C /src install")
    assert "units in /usr/local/lib/systemd/system (none enabled)" in out
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
