"""Images for the push benchmark: random (incompressible) layers, and real files from this machine.

The realistic image is made of directories every Debian machine that runs the suite has
(Python's standard library, vim's runtime, perl, git's helpers, icon themes): text, code,
bytecode and images, so it compresses like a real application image (≈ 3:1 with gzip).
Directories that are missing are left out; the size printed is what was found.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

from tpmtls.lab import build_docker_archive

REAL_LAYERS = (  # the smallest first, so --real-layers 1 makes a quick test image
    ("usr/lib/git-core",),
    ("usr/lib/python3.11",),
    ("usr/share/vim",),
    ("usr/share/perl", "usr/lib/x86_64-linux-gnu/perl"),
    ("usr/share/icons",),
)


def random_image(path: Path, size_mb: int, layers: int) -> tuple[Path, int]:
    size = size_mb * 1_000_000
    build_docker_archive(path, [{f"layer{i}.bin": size // layers} for i in range(layers)], repo_tag="bench:1")
    return path, size


def real_image(path: Path, layers: int = len(REAL_LAYERS), root: Path = Path("/")) -> tuple[Path, int]:
    """A docker-archive whose layers are tars of real directories (the first `layers` of
    REAL_LAYERS); returns (path, uncompressed bytes)."""
    work = path.parent / (path.name + ".layers")
    work.mkdir(parents=True, exist_ok=True)
    diff_ids, names, total = [], [], 0
    for i, dirs in enumerate(REAL_LAYERS[:layers]):
        present = [d for d in dirs if (root / d).is_dir()]
        if not present:
            continue
        layer = work / f"layer{i}.tar"
        with tarfile.open(layer, "w", format=tarfile.PAX_FORMAT) as tar:
            for d in present:
                tar.add(root / d, arcname=d, filter=_normalise)
        h = hashlib.sha256()
        with open(layer, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        diff_ids.append("sha256:" + h.hexdigest())
        names.append(layer)
        total += layer.stat().st_size
    if not names:
        raise RuntimeError("none of the directories for the realistic image exist on this machine")
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = [{"Config": config_name, "RepoTags": ["bench-real:1"],
                 "Layers": [f"{d[7:]}/layer.tar" for d in diff_ids]}]
    with tarfile.open(path, "w") as tar:
        _add_bytes(tar, config_name, config)
        for d, layer in zip(diff_ids, names, strict=True):
            tar.add(layer, arcname=f"{d[7:]}/layer.tar")
        _add_bytes(tar, "manifest.json", json.dumps(manifest).encode())
    for layer in names:
        os.unlink(layer)
    work.rmdir()
    return path, total


def _normalise(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    if not (info.isfile() or info.isdir() or info.issym()):
        return None
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
