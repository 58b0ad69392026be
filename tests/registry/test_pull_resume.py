"""tpmtls-pull as robust as push: a connection cut mid-blob is resumed (Range), a killed pull's
partial blob is taken over by the next run, SIGTERM and Ctrl-C leave nothing behind, and a
disk too small is one line naming the directory and the space needed."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tpmtls
from support.commands import one_line, require
from support.peers import CuttingProxy
from support.registry import env_for, partial_sizes, run_cli
from tpmtls.lab import build_docker_archive
from tpmtls.lab.process import child_env
from tpmtls.registry.blobcache import BlobCache

LAYER = 24_000_000  # random: ~24 MB on the wire


@pytest.fixture(scope="module")
def pushed(registry, tpm_certs, test_tpm, tmp_path_factory):
    """An image with one 24 MB random layer in the registry: (reference, manifest digest, layer descriptor)."""
    work = tmp_path_factory.mktemp("pushed")
    image = build_docker_archive(work / "img.tar", [{"big.bin": LAYER}, {"small": b"hi\n"}])
    ref = f"localhost:{registry.port}/resume:1"
    result = tpmtls.push(f"docker-archive:{image}", ref, cert_dir=tpm_certs, tcti=test_tpm.tcti,
                         cache=BlobCache(work / "cache.json"))
    return ref, result.digest


def _layers(layout: Path, digest: str) -> list[dict]:
    manifest = json.loads((layout / "blobs" / "sha256" / digest[7:]).read_bytes())
    return manifest["layers"]


def _sha(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_connection_cut_mid_blob_is_resumed_and_each_byte_comes_about_once(registry, pushed, tpm_certs, test_tpm,
                                                                             tmp_path):
    ref, digest = pushed
    cutter = CuttingProxy(registry.port, cut_down_after=LAYER // 2)
    try:
        result = tpmtls.pull(ref.replace(str(registry.port), str(cutter.port)), f"oci:{tmp_path / 'out'}",
                             cert_dir=tpm_certs, tcti=test_tpm.tcti, cache=BlobCache(tmp_path / "c.json"))
    finally:
        cutter.close()
    assert cutter.cuts == 1
    assert result.digest == digest
    layers = _layers(tmp_path / "out", digest)
    total = sum(layer["size"] for layer in layers)
    for layer in layers:  # complete, and what the registry holds
        assert _sha(tmp_path / "out" / "blobs" / "sha256" / layer["digest"][7:]) == layer["digest"]
    print(f"{cutter.received / 1e6:.1f} MB came down for {total / 1e6:.1f} MB of layers")
    assert cutter.received < 1.1 * total  # resumed where it was cut, not fetched again


def test_a_killed_pull_is_taken_over_by_the_next_run(registry, pushed, tpm_certs, test_tpm, tmp_path):
    ref, digest = pushed
    layout = tmp_path / "layout"
    blobs = layout / "blobs" / "sha256"
    slow = CuttingProxy(registry.port, hold_down_after=LAYER // 2)  # the download stalls: the kill falls mid-blob
    env = env_for(test_tpm, tmp_path)
    args = [sys.executable, "-m", "tpmtls.cli.pull", ref.replace(str(registry.port), str(slow.port)), f"oci:{layout}",
            "--cert-dir", str(tpm_certs)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=child_env(env))
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            partial = partial_sizes(blobs)
            if partial and max(partial) > LAYER // 4:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the pull finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        slow.close()
    kept = sum(p.stat().st_size for p in blobs.iterdir() if p.name.startswith(".tmp-"))
    assert kept > LAYER // 4
    counting = CuttingProxy(registry.port)
    try:
        again = run_cli("pull", ref.replace(str(registry.port), str(counting.port)), f"oci:{layout}", "--cert-dir",
                        str(tpm_certs), env=env)
    finally:
        counting.close()
    assert again.returncode == 0, again.stderr
    assert not [p for p in blobs.iterdir() if p.name.startswith(".tmp-")]
    layers = _layers(layout, digest)
    for layer in layers:
        assert _sha(blobs / layer["digest"][7:]) == layer["digest"]
    total = sum(layer["size"] for layer in layers)
    print(f"killed after {kept / 1e6:.1f} MB; the next run fetched {counting.received / 1e6:.1f} MB of {total / 1e6:.1f}")
    assert counting.received < total - kept + 1_000_000  # what the killed pull had is not fetched again


@pytest.mark.parametrize("kind", ["oci", "docker-archive"])
def test_sigterm_stops_the_pull_and_leaves_nothing_behind(kind, registry, pushed, tpm_certs, test_tpm, tmp_path):
    ref, _ = pushed
    out = tmp_path / "dest"
    out.mkdir()
    target = out / ("layout" if kind == "oci" else "img.tar")
    slow = CuttingProxy(registry.port, hold_down_after=LAYER // 2)  # the download stalls mid-blob
    env = env_for(test_tpm, tmp_path)
    args = [sys.executable, "-m", "tpmtls.cli.pull", ref.replace(str(registry.port), str(slow.port)),
            f"{kind}:{target}", "--cert-dir", str(tpm_certs)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=child_env(env))
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if slow.holding.is_set() and any(size > 1_000_000 for size in partial_sizes(out)):  # stalled mid-blob
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the pull finished before it could be stopped"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)  # a stalled download must not hold the exit
    finally:
        slow.close()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines() == ["tpmtls-pull: terminated"], err
    left = [str(p.relative_to(out)) for p in out.rglob("*") if ".tmp-" in p.name]
    assert left == [], left
    assert not target.exists() or kind == "oci"


def test_a_disk_too_small_is_one_line_naming_the_directory_and_the_space(registry, pushed, tpm_certs, test_tpm,
                                                                         tmp_path):
    """A 4 MB tmpfs, mounted in a mount namespace of the pull's own (nothing outside sees it)."""
    require("unshare", "mount")
    ref, _ = pushed
    small = tmp_path / "small"
    small.mkdir()
    pull = " ".join([sys.executable, "-m", "tpmtls.cli.pull", ref, f"oci:{small}/layout", "--cert-dir", str(tpm_certs)])
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           f"mount -t tmpfs -o size=4m tpmtls-test {small} && exec {pull}"],
                          capture_output=True, text=True, timeout=120, env=child_env(env_for(test_tpm, tmp_path)))
    line = one_line(proc)
    assert proc.returncode == 1
    assert f"{small}/layout/blobs/sha256: not enough space" in line and "MB" in line, line
    assert shutil.disk_usage(small).free > 4 << 20  # the namespace's mount went with it
