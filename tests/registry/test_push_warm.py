"""A re-push of an unchanged image reads no layer bytes, and the cache behind that never
vouches for bytes it did not see: a changed file is read again, an interrupted push leaves
no entry for what it did not finish, a daemon image known to the registry needs no save."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import tpmtls
from support.peers import CuttingProxy
from support.proxy import DockerSocketSpy, docker
from support.registry import env_for, run_cli, skopeo_layers, skopeo_raw
from tpmtls.lab import build_docker_archive
from tpmtls.lab.process import child_env
from tpmtls.registry.blobcache import BlobCache


def _config(archive: Path) -> dict:
    with tarfile.open(archive) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".json") and m.name != "manifest.json")
        return json.loads(tar.extractfile(member).read())


def _push(image: str, dest: str, tpm_certs, test_tpm, cache: Path, **options):
    return tpmtls.push(image, dest, cert_dir=tpm_certs, tcti=test_tpm.tcti, cache=BlobCache(cache), **options)


def test_a_warm_repush_reads_no_layer_bytes(registry, tpm_certs, test_tpm, tmp_path):
    image = build_docker_archive(tmp_path / "img.tar", [{"a.bin": 3_000_000}, {"b.txt": b"text\n" * 20_000}])
    dest = f"localhost:{registry.port}/warm:1"
    cold = _push(f"docker-archive:{image}", dest, tpm_certs, test_tpm, tmp_path / "c.json")
    assert cold.uploaded == 3 and cold.layer_bytes_read >= 3_000_000
    warm = _push(f"docker-archive:{image}", dest, tpm_certs, test_tpm, tmp_path / "c.json")
    assert (warm.uploaded, warm.existing, warm.bytes_sent, warm.layer_bytes_read) == (0, 3, 0, 0)
    assert warm.digest == cold.digest
    elsewhere = _push(f"docker-archive:{image}", f"localhost:{registry.port}/warm-other:1", tpm_certs, test_tpm,
                      tmp_path / "c.json")
    assert (elsewhere.mounted, elsewhere.layer_bytes_read, elsewhere.digest) == (3, 0, cold.digest)


def test_the_same_archive_name_with_a_changed_layer_sends_that_layer(registry, tpm_certs, soft_certs, test_tpm,
                                                                     tmp_path):
    image = tmp_path / "app.tar"
    dest = f"localhost:{registry.port}/changed:1"
    build_docker_archive(image, [{"base.bin": 2_000_000}, {"app.txt": b"version 1\n" * 1000}])
    first = _push(f"docker-archive:{image}", dest, tpm_certs, test_tpm, tmp_path / "c.json")
    build_docker_archive(image, [{"base.bin": 2_000_000}, {"app.txt": b"version 2\n" * 1000}])  # same name, new content
    second = _push(f"docker-archive:{image}", dest, tpm_certs, test_tpm, tmp_path / "c.json")
    assert second.digest != first.digest
    assert second.uploaded >= 3  # config and both layers: the random base layer is new content too
    assert second.layer_bytes_read > 0
    assert skopeo_layers(dest, soft_certs) == [layer["digest"] for layer in json.loads(skopeo_raw(dest, soft_certs)[0])["layers"]]
    again = _push(f"docker-archive:{image}", dest, tpm_certs, test_tpm, tmp_path / "c.json")
    assert (again.uploaded, again.layer_bytes_read, again.digest) == (0, 0, second.digest)


def test_a_layer_edited_in_place_is_read_and_refused_not_vouched_for(registry, tpm_certs, soft_certs, test_tpm,
                                                                     tmp_path):
    """One byte of a layer changed, size and mtime put back: the cache does not know this file
    any more (its ctime moved), so the layer is read, and it no longer matches its diff_id."""
    image = build_docker_archive(tmp_path / "img.tar", [{"a.bin": 500_000}])
    dest = f"localhost:{registry.port}/edited:1"
    _push(f"docker-archive:{image}", dest, tpm_certs, test_tpm, tmp_path / "c.json")
    with tarfile.open(image) as tar:
        layer = next(m for m in tar.getmembers() if m.name.endswith("layer.tar"))
    st = image.stat()
    with open(image, "r+b") as f:
        f.seek(layer.offset_data + layer.size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (image.stat().st_size, image.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    with pytest.raises(tpmtls.ImageError, match="does not match its diff_id"):
        _push(f"docker-archive:{image}", dest, tpm_certs, test_tpm, tmp_path / "c.json")


def test_a_daemon_repush_makes_no_docker_save_when_the_registry_has_every_layer(dockerd, registry, tpm_certs,
                                                                               test_tpm, tmp_path, monkeypatch):
    archive = build_docker_archive(tmp_path / "img.tar", [{"a.bin": 1_000_000}, {"b.txt": b"b\n" * 1000}],
                                   repo_tag="warm-daemon:1")
    docker(dockerd.env, "load", "-i", str(archive))
    with DockerSocketSpy(dockerd.host.removeprefix("unix://"), tmp_path / "spy.sock") as spy:
        monkeypatch.setenv("DOCKER_HOST", spy.env["DOCKER_HOST"])
        dest = f"localhost:{registry.port}/warm-daemon:1"
        cold = _push("warm-daemon:1", dest, tpm_certs, test_tpm, tmp_path / "c.json")
        assert cold.saved and spy.saves() == 1 and cold.layer_bytes_read > 1_000_000
        warm = _push("warm-daemon:1", dest, tpm_certs, test_tpm, tmp_path / "c.json")
        assert (warm.saved, spy.saves(), warm.layer_bytes_read) == (False, 1, 0)
        assert (warm.uploaded, warm.existing, warm.digest) == (0, 3, cold.digest)  # the very same manifest
        other = _push("warm-daemon:1", f"localhost:{registry.port}/warm-daemon-2:1", tpm_certs, test_tpm,
                      tmp_path / "c.json")
        assert (other.saved, spy.saves(), other.mounted, other.digest) == (False, 1, 3, cold.digest)
        # a cache that does not know the image (another machine, a cleared cache): the save runs
        fresh = _push("warm-daemon:1", dest, tpm_certs, test_tpm, tmp_path / "fresh.json")
        assert fresh.saved and spy.saves() == 2


def test_the_cache_survives_an_interrupted_push_without_vouching_for_a_partial_blob(registry, tpm_certs, soft_certs,
                                                                                    test_tpm, tmp_path):
    """SIGKILL in the middle of a layer's upload (a slow link): the cache file is whole, knows the
    blobs that were done and nothing of the one cut; the next push sends the rest and the one
    after reads nothing."""
    image = build_docker_archive(tmp_path / "img.tar", [{"small.txt": b"small\n" * 1000}, {"big.bin": 12_000_000}])
    slow = CuttingProxy(registry.port, hold_up_after=3_000_000)  # the big layer's upload stalls: killed mid-blob
    env = {**child_env(), **env_for(test_tpm, tmp_path)}
    cache = tmp_path / "cache" / "tpmtls" / "blobs.json"
    args = [sys.executable, "-m", "tpmtls.cli.push", f"docker-archive:{image}", "--cert-dir", str(tpm_certs),
            "--jobs", "1"]
    try:
        proc = subprocess.Popen([*args[:4], f"localhost:{slow.port}/killed:1", *args[4:]], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=env)
        assert slow.holding.wait(120), "the push never got that far"
        assert proc.poll() is None, "the push finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        slow.close()
    tables = json.loads(cache.read_text())  # whole: written by rename, never in place
    big_diff_id = _config(image)["rootfs"]["diff_ids"][-1]
    held = {d for layers in tables["layers"].values() for d in layers}
    seen = {entry[0] for entry in tables["files"].values()}
    assert big_diff_id not in held and big_diff_id not in seen
    assert held  # what was done before the kill is kept
    dest = f"localhost:{registry.port}/killed:1"
    again = run_cli("push", f"docker-archive:{image}", dest, "--cert-dir", str(tpm_certs), env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count(": Pushed") >= 1 and len(skopeo_layers(dest, soft_certs)) == 2
    warm = _push(f"docker-archive:{image}", dest, tpm_certs, test_tpm, cache)
    assert (warm.uploaded, warm.layer_bytes_read) == (0, 0)
