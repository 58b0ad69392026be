"""Every refusal is one clear line with a non-zero exit and no traceback; SIGINT leaves nothing broken."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from support.commands import one_line
from support.peers import CuttingProxy, Pki
from support.registry import cert_dir, env_for, run_cli, skopeo_raw
from tpmtls.lab import build_docker_archive
from tpmtls.lab.process import child_env
from tpmtls.testing import free_port


def push(image, dest, certs, test_tpm, tmp_path, *extra):
    return run_cli("push", f"docker-archive:{image}", dest, "--cert-dir", str(certs), *extra,
                   env=env_for(test_tpm, tmp_path))


def test_registry_rejects_client_certificate(registry, pki, small_image, test_tpm, tmp_path):
    stranger = Pki(tmp_path / "other", cn="not the registry's CA")
    cert, key = stranger.software_client("stranger")
    certs = cert_dir(tmp_path / "c", pki, cert, key)  # trusts the registry, but its cert is from elsewhere
    line = one_line(push(small_image, f"localhost:{registry.port}/x:1", certs, test_tpm, tmp_path))
    assert f"localhost:{registry.port}" in line and "refused our client certificate" in line


def test_no_client_certificate(registry, pki, small_image, test_tpm, tmp_path):
    certs = cert_dir(tmp_path / "c", pki, None, None)
    line = one_line(push(small_image, f"localhost:{registry.port}/x:1", certs, test_tpm, tmp_path))
    assert "requires a client certificate and none is configured" in line


def test_server_certificate_not_trusted(registry, pki, tpm_certs, small_image, test_tpm, tmp_path):
    certs = tmp_path / "noca"
    certs.mkdir()
    for name in ("client.cert", "client.key"):
        (certs / name).write_bytes((tpm_certs / name).read_bytes())
    line = one_line(push(small_image, f"localhost:{registry.port}/x:1", certs, test_tpm, tmp_path))
    assert "server certificate not trusted" in line


def test_name_does_not_match(registry, tpm_certs, small_image, test_tpm, tmp_path):
    name = f"wrong.example:{registry.port}"
    line = one_line(push(small_image, f"{name}/x:1", tpm_certs, test_tpm, tmp_path,
                                 "--resolve", f"{name}:127.0.0.1"))
    assert "not valid for the name 'wrong.example'" in line


def test_registry_down(tpm_certs, small_image, test_tpm, tmp_path):
    port = free_port()
    line = one_line(push(small_image, f"localhost:{port}/x:1", tpm_certs, test_tpm, tmp_path))
    assert f"localhost:{port}" in line and "refused" in line.lower()


@pytest.mark.parametrize("image, expected", [
    ("docker-archive:/nonexistent/img.tar", "/nonexistent/img.tar: no such file or directory"),
    ("oci:/nonexistent/layout", "/nonexistent/layout: no such file or directory"),
])
def test_missing_images(image, expected, registry, tpm_certs, test_tpm, tmp_path):
    proc = run_cli("push", image, f"localhost:{registry.port}/x:1", "--cert-dir", str(tpm_certs),
                   env=env_for(test_tpm, tmp_path))
    assert expected in one_line(proc)


def test_unreadable_archive(registry, tpm_certs, test_tpm, tmp_path):
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"\x00not a tar at all" * 100)
    line = one_line(push(garbage, f"localhost:{registry.port}/x:1", tpm_certs, test_tpm, tmp_path))
    assert "garbage.tar" in line


def test_bad_destination(tpm_certs, small_image, test_tpm, tmp_path):
    line = one_line(push(small_image, "justaname", tpm_certs, test_tpm, tmp_path))
    assert "HOST[:PORT]/REPO[:TAG]" in line


def test_sigint_then_resume(registry, tpm_certs, soft_certs, test_tpm, tmp_path):
    """SIGINT mid-upload (through a slow loopback link): exit 130, one line, nothing tagged;
    the same command then completes."""
    image = build_docker_archive(tmp_path / "big.tar", [{"big.bin": 40_000_000}])
    proxy = CuttingProxy(registry.port, throttle=0.002, signal_after=4_000_000)
    dest = f"localhost:{proxy.port}/interrupted:1"
    env = {**child_env(), **env_for(test_tpm, tmp_path)}
    try:
        proc = subprocess.Popen([sys.executable, "-m", "tpmtls.cli.push", f"docker-archive:{image}", dest,
                                 "--cert-dir", str(tpm_certs)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        assert proxy.carried_enough.wait(60), "the upload never started"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proxy.close()
    assert proc.returncode == 130, (out, err)
    assert err.strip().splitlines() == [err.strip()] and "interrupted" in err and "Traceback" not in err
    assert "digest:" not in out  # nothing was tagged
    again = push(image, f"localhost:{registry.port}/interrupted:1", tpm_certs, test_tpm, tmp_path)
    assert again.returncode == 0, again.stderr
    _, digest = skopeo_raw(f"localhost:{registry.port}/interrupted:1", soft_certs)
    assert f"digest: {digest}" in again.stdout
