"""Layers verified against the config, true resume, references checked first."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from support.commands import one_line
from support.peers import CuttingProxy
from support.registry import env_for, run_cli, skopeo_layers
from support.wait import wait_until
from tpmtls.lab import build_docker_archive
from tpmtls.lab.process import child_env


def _tamper(archive: Path, member_suffix: str, out: Path) -> str:
    """Copy `archive` to `out` with one byte changed inside the first member ending in `member_suffix`."""
    shutil.copy(archive, out)
    with tarfile.open(out) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(member_suffix) and m.size > 600)
    with open(out, "r+b") as f:
        f.seek(member.offset_data + member.size - 600)  # inside the file's content, not its tar header
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    return member.name


def _tags(registry, repo: str, certs: Path) -> int:
    proc = subprocess.run(["skopeo", "list-tags", "--cert-dir", str(certs), f"docker://localhost:{registry.port}/{repo}"],
                          capture_output=True, text=True, env=child_env(), timeout=60)
    return len(json.loads(proc.stdout)["Tags"] or []) if proc.returncode == 0 else 0


def test_layer_not_matching_its_diff_id_is_refused_and_not_cached(registry, tpm_certs, soft_certs, test_tpm,
                                                                   tmp_path):
    good = build_docker_archive(tmp_path / "good.tar", [{"a.txt": b"first layer\n" * 500}, {"b.bin": 300_000}])
    bad = tmp_path / "bad.tar"
    layer = _tamper(good, "layer.tar", bad)
    env = env_for(test_tpm, tmp_path)
    dest = f"localhost:{registry.port}/corrupt:1"
    line = one_line(run_cli("push", f"docker-archive:{bad}", dest, "--cert-dir", str(tpm_certs), env=env))
    print(line)
    assert layer in line and "diff_id" in line and "nothing was tagged" in line
    assert _tags(registry, "corrupt", soft_certs) == 0
    cache = tmp_path / "cache" / "tpmtls" / "blobs.json"
    tables = json.loads(cache.read_text()) if cache.exists() else {}
    cached = {d for layers in (tables.get("layers") or {}).values() for d in layers}  # what the registry holds
    seen = {entry[0] for entry in (tables.get("files") or {}).values()}  # file regions read whole and matched
    config = json.loads(next(iter(tarfile.open(good).extractfile(m).read() for m in tarfile.open(good).getmembers()
                                  if m.name.endswith(".json") and m.name != "manifest.json")))
    # only the layer that was right may be cached; the tampered one never is
    assert len([d for d in config["rootfs"]["diff_ids"] if d in cached]) <= 1
    assert len([d for d in config["rootfs"]["diff_ids"] if d in seen]) <= 1
    proc = run_cli("push", f"docker-archive:{good}", dest, "--cert-dir", str(tpm_certs), env=env)
    assert proc.returncode == 0, proc.stderr
    assert len(skopeo_layers(dest, soft_certs)) == 2  # the registry verified every layer skopeo reads


def test_oci_blob_not_matching_its_descriptor_is_refused(registry, tpm_certs, soft_certs, small_image, test_tpm,
                                                         tmp_path):
    layout = tmp_path / "layout"
    subprocess.run(["skopeo", "copy", "--insecure-policy", f"docker-archive:{small_image}", f"oci:{layout}:v1"],
                   check=True, capture_output=True, env=child_env(), timeout=120)
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((layout / "blobs" / "sha256" / index["manifests"][0]["digest"][7:]).read_bytes())
    big = max(manifest["layers"], key=lambda d: d["size"])
    blob = layout / "blobs" / "sha256" / big["digest"][7:]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    line = one_line(run_cli("push", f"oci:{layout}:v1", f"localhost:{registry.port}/ocibad:v1",
                                    "--cert-dir", str(tpm_certs), env=env_for(test_tpm, tmp_path)))
    print(line)
    assert big["digest"] in line and "does not match" in line
    assert _tags(registry, "ocibad", soft_certs) == 0


@pytest.mark.parametrize("ref, words", [
    ("x:bad/tag", "repository"),
    ("x:-bad", "tag '-bad'"),
    ("x:" + "t" * 200, "longer than 128"),
    ("x..y", "repository 'x..y'"),
    ("x:", "tag after ':' is empty"),
])
def test_bad_references_fail_before_any_network_call(ref, words, small_image, tmp_path):
    # nothing listens on this port: an error about the reference proves no connection was tried
    dest = f"localhost:9/{ref}"
    line = one_line(run_cli("push", f"docker-archive:{small_image}", dest, env={"XDG_CACHE_HOME": str(tmp_path)}))
    print(line)
    assert words in line and "Traceback" not in line


def test_url_reference_is_one_line(small_image, tmp_path):
    line = one_line(run_cli("push", f"docker-archive:{small_image}", "https://localhost:9/x:1", env={}))
    assert "no URL scheme" in line
    line = one_line(run_cli("pull", "https://localhost:9/x:1", f"oci:{tmp_path}/o", env={}))
    assert "no URL scheme" in line


LAYERS = 6
LAYER_SIZE = 6_000_000


def _layers_held(cache: Path) -> int:
    """Layers the push cache says the registry holds (in any repository)."""
    return len({d for layers in json.loads(cache.read_text())["layers"].values() for d in layers})


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_push_resends_only_missing_blobs(sig, registry, tpm_certs, soft_certs, test_tpm, tmp_path):
    image = build_docker_archive(tmp_path / "img.tar", [{f"f{i}.bin": LAYER_SIZE} for i in range(LAYERS)])
    env = {**child_env(), **env_for(test_tpm, tmp_path)}
    dest = f"localhost:{registry.port}/resume-{sig.name.lower()}:1"
    args = [sys.executable, "-m", "tpmtls.cli.push", f"docker-archive:{image}", dest, "--cert-dir", str(tpm_certs),
            "--jobs", "1"]
    cache = tmp_path / "cache" / "tpmtls" / "blobs.json"
    # the third layer's upload stalls half-way, so the signal falls mid-push however fast the machine
    stall = CuttingProxy(registry.port, hold_up_after=int(2.5 * LAYER_SIZE))
    through = [a.replace(str(registry.port), str(stall.port)) if a == dest else a for a in args]
    proc = subprocess.Popen(through, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def two_blobs_recorded_and_stalled_or_exit() -> bool:
        try:
            done = _layers_held(cache)
        except (OSError, ValueError, KeyError):
            done = 0
        return (done >= 2 and stall.holding.is_set()) or proc.poll() is not None

    try:
        wait_until(two_blobs_recorded_and_stalled_or_exit, 120, "the push recording two blobs, then stalling",
                   interval=0.02)
        assert proc.poll() is None, "the push finished before it could be interrupted"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)  # a stalled upload must not hold the exit (it held it ~54 s)
    finally:
        stall.close()
    if sig == signal.SIGINT:
        assert proc.returncode == 130, err
        assert "interrupted" in err and "nothing was tagged" in err and len(err.strip().splitlines()) == 1, err
    else:
        assert proc.returncode == -signal.SIGKILL
    recorded = _layers_held(cache)
    assert 2 <= recorded < LAYERS
    again = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    print(again.stdout)
    pushed = again.stdout.count(": Pushed")
    existing = again.stdout.count(": Layer already exists")
    assert existing >= recorded and pushed <= LAYERS + 1 - recorded, again.stdout
    assert len(skopeo_layers(dest, soft_certs)) == LAYERS


class _SavedFile:
    """Stands in for docker-py's Image: save() yields an archive's bytes as dockerd streams them."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def save(self, named: bool = False):
        with open(self.path, "rb") as f:
            while True:
                data = f.read(300_000)
                if not data:
                    return
                yield data


def test_streamed_daemon_save_checks_layers_against_the_config(tmp_path):
    from tpmtls.errors import ImageError
    from tpmtls.registry.daemon_stream import stream_daemon_image

    good = build_docker_archive(tmp_path / "good.tar", [{"a.txt": b"first layer\n" * 500}, {"b.bin": 300_000}])
    bad = tmp_path / "bad.tar"
    layer = _tamper(good, "layer.tar", bad)
    for archive, ok in ((good, True), (bad, False)):
        seen = []
        img = stream_daemon_image("demo:1", _SavedFile(archive), seen.append)
        try:
            assert len(seen) == 2  # both layers handed over while streaming
            for blob in seen:
                blob.prepare(blob)
            uploaded = {b: ("sha256:" + "0" * 64, 1) for b in img.blobs}
            if ok:
                manifest = json.loads(img.render(uploaded)[0][0])
                assert len(manifest["layers"]) == 2
            else:
                with pytest.raises(ImageError, match=layer.replace(".", r"\.")):
                    img.render(uploaded)
        finally:
            img.cleanup()
