"""podman, buildah and skopeo (containers/image) with private storage and configuration in a temp dir.

Each run gets `HOME`, `CONTAINERS_CONF`, `CONTAINERS_STORAGE_CONF`, `CONTAINERS_REGISTRIES_CONF`
(podman, buildah; skopeo's `--registries-conf`), a signature policy and `--root/--runroot`
of the work directory. The registries.conf.d drop-ins the caller writes go in
`dropin_dir` ($HOME/.config/containers/registries.conf.d, which all three read after the main
file), so a drop-in is read the way /etc/containers/registries.conf.d would be.

One thing is not private: as root, containers/image 5.23 keeps its blob-location cache in
/var/lib/containers/cache whatever the storage root (podman 4.3 and buildah 1.28 have no
option to move it). It is a cache of where blobs were seen, not configuration.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .process import child_env, find_binary, make_workdir, remove_workdir

_POLICY = '{"default": [{"type": "insecureAcceptAnything"}]}\n'


class ContainersTools:
    """Runs podman, buildah and skopeo against storage and configuration of their own."""

    def __init__(self, workdir: str | os.PathLike[str] | None = None) -> None:
        self.workdir, self._owns_workdir = make_workdir(workdir, "tpmtls-containers-")
        w = self.workdir
        self.home = w / "home"
        self.dropin_dir = self.home / ".config" / "containers" / "registries.conf.d"
        self.root, self.tmp = w / "storage", w / "tmp"
        # podman refuses a runroot longer than 50 characters: a short dir of its own in /tmp
        self.runroot = Path(tempfile.mkdtemp(prefix="tpp-", dir="/tmp"))
        for d in (self.dropin_dir, self.root, self.tmp, w / "networks"):
            d.mkdir(parents=True, exist_ok=True)
        self.policy = w / "policy.json"
        self.policy.write_text(_POLICY)
        (w / "auth.json").write_text('{"auths": {}}\n')  # podman needs an auth file it is pointed at to exist
        self.registries_conf = w / "registries.conf"
        self.registries_conf.write_text("# the main registries.conf of this lab: empty; drop-ins do the work\n")
        (w / "storage.conf").write_text(
            f'[storage]\ndriver = "vfs"\ngraphroot = "{self.root}"\nrunroot = "{self.runroot}"\n')
        (w / "containers.conf").write_text("\n".join([
            "[engine]", 'events_logger = "file"', f'events_logfile_path = "{w / "events.log"}"',
            'cgroup_manager = "cgroupfs"', f'image_copy_tmp_dir = "{self.tmp}"',
            "[network]", f'network_config_dir = "{w / "networks"}"', ""]))

    def env(self) -> dict[str, str]:
        w = self.workdir
        return child_env({"HOME": str(self.home), "XDG_CONFIG_HOME": str(self.home / ".config"),
                          "XDG_DATA_HOME": str(self.home / ".local" / "share"), "TMPDIR": str(self.tmp),
                          "CONTAINERS_CONF": str(w / "containers.conf"),
                          "CONTAINERS_STORAGE_CONF": str(w / "storage.conf"),
                          "CONTAINERS_REGISTRIES_CONF": str(self.registries_conf),
                          "REGISTRY_AUTH_FILE": str(w / "auth.json")})

    def _run(self, argv: list[str], check: bool, timeout: float) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(argv, capture_output=True, text=True, env=self.env(), timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{Path(argv[0]).name} {' '.join(argv[1:])} exited {proc.returncode}: "
                               f"{proc.stderr.strip()[-600:]}")
        return proc

    def podman(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """`podman --root … --runroot … --tmpdir … ARGS…`."""
        argv = [find_binary("podman"), "--root", str(self.root), "--runroot", str(self.runroot),
                "--tmpdir", str(self.tmp), "--events-backend", "file", "--cgroup-manager", "cgroupfs", *args]
        return self._run(argv, check, timeout)

    def buildah(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """`buildah --root … --runroot … ARGS…` (same storage as podman)."""
        return self._run([find_binary("buildah"), "--root", str(self.root), "--runroot", str(self.runroot), *args],
                         check, timeout)

    def skopeo(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """`skopeo --registries-conf … --policy … ARGS…` (skopeo ignores CONTAINERS_REGISTRIES_CONF)."""
        return self._run([find_binary("skopeo"), "--registries-conf", str(self.registries_conf),
                          "--policy", str(self.policy), *args], check, timeout)

    def close(self) -> None:
        shutil.rmtree(self.runroot, ignore_errors=True)
        if self._owns_workdir:
            remove_workdir(self.workdir)
        else:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "ContainersTools":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["ContainersTools"]
