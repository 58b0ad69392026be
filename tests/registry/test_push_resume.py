"""A dropped connection mid-layer: the push resumes where the registry's copy ends."""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import tpmtls
from support.peers import CuttingProxy
from support.registry import env_for, skopeo_layers, skopeo_raw
from tpmtls.lab import build_docker_archive
from tpmtls.lab.process import child_env
from tpmtls.registry.push import BlobCache

LAYER = 24_000_000  # random, so gzip cannot shrink it: ~24 MB on the wire


def push_through(where: str, registry, tpm_certs, soft_certs, test_tpm, tmp_path) -> tuple[int, int]:
    image = build_docker_archive(tmp_path / "img.tar", [{"big.bin": LAYER}])
    with CuttingProxy(registry.port, cut_after=LAYER // 2, where=where) as proxy:
        result = tpmtls.push(f"docker-archive:{image}", f"localhost:{proxy.port}/cut-{where}:1", cert_dir=tpm_certs,
                             tcti=test_tpm.tcti, cache=BlobCache(tmp_path / "c.json"))
    assert proxy.cuts == 1
    ref = f"localhost:{registry.port}/cut-{where}:1"
    raw, digest = skopeo_raw(ref, soft_certs)
    assert result.digest == digest
    layer = json.loads(raw)["layers"][0]
    assert skopeo_layers(ref, soft_certs) == [layer["digest"]]  # complete and verified by the registry
    print(f"cut {where}: {proxy.sent / 1e6:.1f} MB sent for a {layer['size'] / 1e6:.1f} MB layer")
    return proxy.sent, layer["size"]


def test_cut_between_requests_resumes(registry, tpm_certs, soft_certs, test_tpm, tmp_path):
    sent, size = push_through("after", registry, tpm_certs, soft_certs, test_tpm, tmp_path)
    assert sent < 1.5 * size  # resumed on the same upload, not restarted


def test_cut_inside_a_request_still_completes(registry, tpm_certs, soft_certs, test_tpm, tmp_path):
    """distribution 2.8 cancels an upload whose size passed its signed offset (see
    BlobUploads._resync in tpmtls/registry/upload.py): the push completes on a fresh upload, costing what was sent."""
    sent, size = push_through("inside", registry, tpm_certs, soft_certs, test_tpm, tmp_path)
    assert sent < 2.1 * size


def test_200mb_layer_memory_stays_flat(registry, tpm_certs, test_tpm, tmp_path):
    """Peak RSS growth of a 200 MB push stays under 64 MB (measured in a child process)."""
    image = build_docker_archive(tmp_path / "big.tar", [{"big.bin": 200_000_000}])
    script = f"""
import resource, tpmtls
from tpmtls.registry.push import BlobCache
from tpmtls.registry.sources import open_image
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
r = tpmtls.push("docker-archive:{image}", "localhost:{registry.port}/big:1", cert_dir="{tpm_certs}",
                cache=BlobCache(__import__("pathlib").Path("{tmp_path}/c.json")))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(before, after, r.bytes_sent)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          env={**child_env(), **env_for(test_tpm, tmp_path)})
    assert proc.returncode == 0, proc.stderr
    before_kb, after_kb, sent = map(int, proc.stdout.split())
    print(f"RSS before {before_kb / 1024:.1f} MB, peak {after_kb / 1024:.1f} MB, sent {sent / 1e6:.1f} MB")
    assert sent > 200_000_000
    assert (after_kb - before_kb) / 1024 < 64
    assert resource  # the parent's own RSS is not what is measured
