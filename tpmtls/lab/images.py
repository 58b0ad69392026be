"""Image archives in `docker save` format, built without a Docker daemon."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def build_docker_archive(path: str | os.PathLike[str], layers: list[dict[str, bytes | int]],
                         repo_tag: str = "demo:1") -> Path:
    """Write a `docker save`-format tar (plain layer tars) that `docker load` accepts.

    Each layer maps file names to content: bytes, or an int = that many random bytes
    (streamed, so a 200 MB layer costs no memory). Deterministic except random content.
    """
    import hashlib
    import io
    import json
    import tarfile

    out = Path(path)
    work = Path(tempfile.mkdtemp(prefix="tpmtls-image-", dir=out.parent))
    try:
        diff_ids, layer_names = [], []
        for i, files in enumerate(layers):
            layer_tar = work / f"layer{i}.tar"
            with tarfile.open(layer_tar, "w", format=tarfile.PAX_FORMAT) as tar:
                for name, content in files.items():
                    info = tarfile.TarInfo(name)
                    info.mtime, info.mode, info.uid, info.gid = 0, 0o755, 0, 0
                    if isinstance(content, int):
                        info.size = content
                        tar.addfile(info, _RandomReader(content))
                    else:
                        info.size = len(content)
                        tar.addfile(info, io.BytesIO(content))
            h = hashlib.sha256()
            with open(layer_tar, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            diff_ids.append("sha256:" + h.hexdigest())
            layer_names.append(f"{h.hexdigest()}/layer.tar")
        config = json.dumps({
            "architecture": "amd64", "os": "linux",
            "config": {"Cmd": ["/hello"], "Env": ["PATH=/"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created_by": f"tpmtls.lab layer {i}"} for i in range(len(layers))],
        }, sort_keys=True).encode()
        config_name = hashlib.sha256(config).hexdigest() + ".json"
        manifest = json.dumps([{"Config": config_name, "RepoTags": [repo_tag], "Layers": layer_names}]).encode()
        with tarfile.open(out, "w") as tar:
            for name, data in ((config_name, config), ("manifest.json", manifest)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            for i, name in enumerate(layer_names):
                tar.add(work / f"layer{i}.tar", arcname=name)
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


class _RandomReader:
    """A file-like object giving `size` random bytes, made 1 MiB at a time."""

    def __init__(self, size: int) -> None:
        self.left = size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return os.urandom(n)
