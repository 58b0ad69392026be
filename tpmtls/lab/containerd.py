"""A private `containerd` (Debian's 1.6) in temp dirs: `ctr` pulls and pushes, and the CRI plugin
kubelet drives, with its registry `config_path` pointed at a hosts directory of the caller's.

Everything the daemon writes stays in its work directory: root, state, the gRPC and ttrpc
sockets, the CNI directories the CRI plugin watches, the `opt` plugin's directory (default
/opt/containerd). No debug or metrics listener. Containers are never run; images are unpacked
with the `native` snapshotter, which works on any file system.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

from .process import Daemon, child_env, fail, find_binary, make_workdir, register, spawn

NAMESPACE = "tpmtls"
#: The namespace the CRI plugin keeps kubelet's images in.
CRI_NAMESPACE = "k8s.io"


class Containerd(Daemon):
    """`containerd --config` of its own; `ctr(...)` runs the CLI against it, `socket` is the CRI endpoint.

    `hosts_dir` is the CRI plugin's `config_path` (a certs.d-style tree of `REG[:PORT]/hosts.toml`),
    read at every pull, so tests can write the files after the daemon started.
    """

    def __init__(self, hosts_dir: str | os.PathLike[str], workdir: str | os.PathLike[str] | None = None) -> None:
        self.workdir, self._owns_workdir = make_workdir(workdir, "tpmtls-containerd-")
        self.hosts_dir = Path(hosts_dir)
        # unix socket paths are limited to 108 bytes: keep the sockets in a short dir
        self._run = Path(tempfile.mkdtemp(prefix="tpc-", dir="/tmp"))
        self.socket = self._run / "containerd.sock"
        self.log_path = self.workdir / "containerd.log"
        self.config_path = self.workdir / "config.toml"
        self._proc: subprocess.Popen[bytes] | None = None

    def _config(self) -> str:
        w = self.workdir
        return "\n".join([
            "version = 2",
            f'root = "{w / "root"}"',
            f'state = "{self._run / "state"}"',
            "[grpc]",
            f'  address = "{self.socket}"',
            "[ttrpc]",
            f'  address = "{self.socket}.ttrpc"',
            "[debug]",
            '  address = ""',
            "[metrics]",
            '  address = ""',
            '[plugins."io.containerd.internal.v1.opt"]',
            f'  path = "{w / "opt"}"',
            '[plugins."io.containerd.grpc.v1.cri"]',
            '  stream_server_address = "127.0.0.1"',
            '  stream_server_port = "0"',
            '  [plugins."io.containerd.grpc.v1.cri".containerd]',
            '    snapshotter = "native"',
            '  [plugins."io.containerd.grpc.v1.cri".cni]',
            f'    bin_dir = "{w / "cni-bin"}"',
            f'    conf_dir = "{w / "cni-conf"}"',
            '  [plugins."io.containerd.grpc.v1.cri".registry]',
            f'    config_path = "{self.hosts_dir}"',
            "",
        ])

    def start(self) -> "Containerd":
        if self._proc is not None:
            return self
        binary = find_binary("containerd")
        self.config_path.write_text(self._config())
        self._proc = spawn([binary, "--config", str(self.config_path)], self.log_path, child_env())
        register(self)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self.stop()
                raise fail("containerd exited at start", self.log_path)
            if self.socket.exists() and self.ctr("version", check=False).returncode == 0:
                return self
            time.sleep(0.1)
        self.stop()
        raise fail("containerd did not answer `ctr version` within 60 s", self.log_path)

    def ctr(self, *args: str, namespace: str = NAMESPACE, check: bool = True,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """`ctr --address SOCKET -n NAMESPACE ARGS…`; raises with its stderr if `check` and it fails."""
        proc = subprocess.run([find_binary("ctr"), "--address", str(self.socket), "-n", namespace, *args],
                              capture_output=True, text=True, env=child_env(), timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()[-600:]}")
        return proc

    def image_digest(self, ref: str, namespace: str = NAMESPACE) -> str:
        """The manifest digest containerd recorded for `ref` (`ctr image ls`)."""
        for line in self.ctr("image", "ls", namespace=namespace).stdout.splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == ref:
                return next(f for f in fields if f.startswith("sha256:"))
        raise RuntimeError(f"containerd has no image {ref}")



__all__ = ["CRI_NAMESPACE", "Containerd", "NAMESPACE"]
