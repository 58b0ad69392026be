"""tpmtls-push to a real mTLS docker-registry; skopeo (software key) reads back the same thing."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

import tpmtls
from support.commands import one_line
from support.registry import env_for, run_cli, skopeo_layers, skopeo_raw
from tpmtls.lab.process import child_env
from tpmtls.registry.push import BlobCache

LINE = "{tag}: digest: {digest} size: {size}"


def test_push_docker_archive(registry, tpm_certs, soft_certs, small_image, test_tpm, tmp_path):
    dest = f"localhost:{registry.port}/demo:1"
    proc = run_cli("push", f"docker-archive:{small_image}", dest, "--cert-dir", str(tpm_certs),
                   env=env_for(test_tpm, tmp_path))
    assert proc.returncode == 0, proc.stderr
    raw, digest = skopeo_raw(dest, soft_certs)
    manifest = json.loads(raw)
    assert proc.stdout.strip().splitlines()[-1] == LINE.format(tag="1", digest=digest, size=len(raw))
    assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert skopeo_layers(dest, soft_certs) == [layer["digest"] for layer in manifest["layers"]]


def test_push_again_uploads_nothing_and_second_repo_mounts(registry, tpm_certs, small_image, test_tpm, tmp_path):
    cache = BlobCache(tmp_path / "cache.json")
    options = dict(cert_dir=tpm_certs, tcti=test_tpm.tcti, cache=cache)
    first = tpmtls.push(f"docker-archive:{small_image}", f"localhost:{registry.port}/again:1", **options)
    assert first.uploaded == 4 and first.bytes_sent > 2_000_000  # config + 3 layers
    second = tpmtls.push(f"docker-archive:{small_image}", f"localhost:{registry.port}/again:1", **options)
    assert (second.uploaded, second.mounted, second.existing, second.bytes_sent) == (0, 0, 4, 0)
    assert second.digest == first.digest
    other = tpmtls.push(f"docker-archive:{small_image}", f"localhost:{registry.port}/elsewhere:1", **options)
    assert (other.uploaded, other.mounted, other.bytes_sent) == (0, 4, 0)
    assert other.digest == first.digest


@pytest.mark.parametrize("kind", ["oci", "oci-archive"])
def test_push_oci_layouts(kind, registry, tpm_certs, soft_certs, small_image, test_tpm, tmp_path):
    target = tmp_path / ("layout" if kind == "oci" else "layout.tar")
    ref = f"{target}:v1" if kind == "oci" else str(target)
    subprocess.run(["skopeo", "copy", "--insecure-policy", f"docker-archive:{small_image}", f"{kind}:{ref}"],
                   check=True, capture_output=True, env=child_env(), timeout=120)
    dest = f"localhost:{registry.port}/{kind}:v1"
    result = tpmtls.push(f"{kind}:{ref}", dest, cert_dir=tpm_certs, tcti=test_tpm.tcti,
                         cache=BlobCache(tmp_path / "c.json"))
    raw, digest = skopeo_raw(dest, soft_certs)
    assert result.digest == digest
    if kind == "oci":  # pushed byte for byte: the layout's own manifest digest
        assert json.loads((target / "index.json").read_text())["manifests"][0]["digest"] == digest


def _oci_multiplatform(layout: Path) -> str:
    """An OCI layout whose index names two single-layer images (amd64, arm64)."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    children = []
    for arch in ("amd64", "arm64"):
        layer = put(f"layer for {arch}".encode() * 100)
        config = put(json.dumps({"architecture": arch, "os": "linux",
                                 "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]}}).encode())
        manifest = put(json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **layer}],
        }).encode())
        children.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest,
                         "platform": {"os": "linux", "architecture": arch}})
    index = put(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                            "manifests": children}).encode())
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.index.v1+json", **index,
         "annotations": {"org.opencontainers.image.ref.name": "multi"}}]}))
    return index["digest"]


def test_push_multiplatform_index(registry, tpm_certs, soft_certs, test_tpm, tmp_path):
    index_digest = _oci_multiplatform(tmp_path / "multi")
    dest = f"localhost:{registry.port}/multi:1"
    result = tpmtls.push(f"oci:{tmp_path / 'multi'}:multi", dest, cert_dir=tpm_certs, tcti=test_tpm.tcti,
                         cache=BlobCache(tmp_path / "c.json"))
    raw, digest = skopeo_raw(dest, soft_certs)
    assert result.digest == digest == index_digest
    for child in json.loads(raw)["manifests"]:  # every platform's manifest is there, by digest
        _, child_digest = skopeo_raw(f"localhost:{registry.port}/multi@{child['digest']}", soft_certs)
        assert child_digest == child["digest"]


def test_pull_round_trip(registry, tpm_certs, small_image, test_tpm, tmp_path):
    dest = f"localhost:{registry.port}/roundtrip:7"
    pushed = tpmtls.push(f"docker-archive:{small_image}", dest, cert_dir=tpm_certs, tcti=test_tpm.tcti,
                         cache=BlobCache(tmp_path / "c.json"))
    pulled = run_cli("pull", dest, f"oci:{tmp_path / 'out'}", "--cert-dir", str(tpm_certs),
                     env=env_for(test_tpm, tmp_path))
    assert pulled.returncode == 0, pulled.stderr
    assert f"Digest: {pushed.digest}" in pulled.stdout
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert index["manifests"][0]["digest"] == pushed.digest
    archive = tmp_path / "img.tar"
    result = tpmtls.pull(dest, f"docker-archive:{archive}", cert_dir=tpm_certs, tcti=test_tpm.tcti)
    assert result.digest == pushed.digest
    # what we pulled pushes back to the very same manifest
    again = tpmtls.push(f"docker-archive:{archive}", f"localhost:{registry.port}/roundtrip2:7",
                        cert_dir=tpm_certs, tcti=test_tpm.tcti, cache=BlobCache(tmp_path / "c2.json"))
    assert again.digest == pushed.digest


def test_skopeo_copy_reads_back_the_same_manifest(registry, tpm_certs, soft_certs, small_image, test_tpm, tmp_path):
    dest = f"localhost:{registry.port}/copied:1"
    pushed = tpmtls.push(f"docker-archive:{small_image}", dest, cert_dir=tpm_certs, tcti=test_tpm.tcti,
                         cache=BlobCache(tmp_path / "c.json"))
    out = tmp_path / "copy"
    subprocess.run(["skopeo", "copy", "--insecure-policy", "--src-cert-dir", str(soft_certs), f"docker://{dest}",
                    f"dir:{out}"], check=True, capture_output=True, env=child_env(), timeout=120)
    manifest = (out / "manifest.json").read_bytes()  # dir: keeps the manifest byte for byte
    assert "sha256:" + hashlib.sha256(manifest).hexdigest() == pushed.digest
    for layer in json.loads(manifest)["layers"]:
        assert "sha256:" + hashlib.sha256((out / layer["digest"][7:]).read_bytes()).hexdigest() == layer["digest"]


def test_progress_bars_on_a_terminal(registry, tpm_certs, small_image, test_tpm, tmp_path):
    """On a terminal (a pty from `script`) rich draws bars; the last line is still docker push's."""
    import shlex
    import shutil
    import sys

    if shutil.which("script") is None:
        pytest.skip("script (util-linux) is not installed")
    cmd = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "tpmtls.cli.push", f"docker-archive:{small_image}",
                                           f"localhost:{registry.port}/tty:1", "--cert-dir", str(tpm_certs)])
    proc = subprocess.run(["script", "-qec", cmd, "/dev/null"], capture_output=True, text=True, timeout=120,
                          env={**child_env(), **env_for(test_tpm, tmp_path), "COLUMNS": "120", "TERM": "xterm"})
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "Pushed" in proc.stdout and "━" in proc.stdout  # rich's bar
    assert "1: digest: sha256:" in proc.stdout


def test_certs_d_rules(registry, pki, small_image, test_tpm, tmp_path):

    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "ca.crt").write_bytes(pki.ca_file.read_bytes())
    (lonely / "client.cert").write_bytes(pki.ca_file.read_bytes())
    line = one_line(run_cli("push", f"docker-archive:{small_image}", f"localhost:{registry.port}/x:1",
                                    "--cert-dir", str(lonely), env=env_for(test_tpm, tmp_path)))
    assert "client.cert: client certificate without its key client.key" in line


def test_flat_layout_with_untagged_manifests(registry, tpm_certs, soft_certs, test_tpm, tmp_path):
    """Several untagged manifests in index.json: choose by digest or --platform."""
    layout = tmp_path / "flat"
    _oci_multiplatform(layout)
    index = json.loads((layout / "index.json").read_text())
    children = json.loads((layout / "blobs" / "sha256" / index["manifests"][0]["digest"][7:]).read_text())["manifests"]
    for child in children:  # the index's children, untagged, straight in index.json (no platform there)
        child.pop("platform")
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": children}))
    env = env_for(test_tpm, tmp_path)

    line = one_line(run_cli("push", f"oci:{layout}", f"localhost:{registry.port}/flat:1", "--cert-dir",
                                    str(tpm_certs), env=env))
    assert "holds 2 images" in line and "@DIGEST" in line and "--platform" in line
    by_digest = run_cli("push", f"oci:{layout}@{children[1]['digest']}", f"localhost:{registry.port}/flat:d",
                        "--cert-dir", str(tpm_certs), env=env)
    assert by_digest.returncode == 0, by_digest.stderr
    assert skopeo_raw(f"localhost:{registry.port}/flat:d", soft_certs)[1] == children[1]["digest"]
    by_platform = run_cli("push", f"oci:{layout}", f"localhost:{registry.port}/flat:p", "--platform", "linux/amd64",
                          "--cert-dir", str(tpm_certs), env=env)  # read from each manifest's config
    assert by_platform.returncode == 0, by_platform.stderr
    assert skopeo_raw(f"localhost:{registry.port}/flat:p", soft_certs)[1] == children[0]["digest"]


def test_platform_out_of_an_index(registry, tpm_certs, soft_certs, test_tpm, tmp_path):
    _oci_multiplatform(tmp_path / "multi")
    index = json.loads((tmp_path / "multi" / "index.json").read_text())
    children = json.loads((tmp_path / "multi" / "blobs" / "sha256" / index["manifests"][0]["digest"][7:])
                          .read_text())["manifests"]
    arm = next(c for c in children if c["platform"]["architecture"] == "arm64")
    result = tpmtls.push(f"oci:{tmp_path / 'multi'}:multi", f"localhost:{registry.port}/one:1", cert_dir=tpm_certs,
                         tcti=test_tpm.tcti, cache=BlobCache(tmp_path / "c.json"), platform="linux/arm64")
    assert result.digest == arm["digest"] == skopeo_raw(f"localhost:{registry.port}/one:1", soft_certs)[1]
