"""Clear refusals and clean failures, pulling and pushing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from support.commands import one_line
from support.peers import CountingListener, CuttingProxy
from support.registry import env_for, partial_sizes, run_cli
from support.wait import wait_until
from tpmtls.lab.process import child_env


def test_silent_server_fails_once_in_bounded_time(tpm_certs, small_image, test_tpm, tmp_path):
    with CountingListener("hold") as listener:
        proc = run_cli("push", f"docker-archive:{small_image}", f"localhost:{listener.port}/x:1", "--cert-dir",
                       str(tpm_certs), env=env_for(test_tpm, tmp_path), timeout=60)
    line = one_line(proc)
    assert "did not answer within 10 s" in line
    assert listener.connections == 1  # not retried


def test_plain_http_on_the_registry_port_is_not_retried(tpm_certs, small_image, test_tpm, tmp_path):
    with CountingListener("http") as listener:
        proc = run_cli("pull", f"localhost:{listener.port}/x:1", f"oci:{tmp_path / 'o'}", "--cert-dir",
                       str(tpm_certs), env=env_for(test_tpm, tmp_path), timeout=60)
    assert "plain HTTP, not TLS" in one_line(proc)
    assert listener.connections == 1


def test_pull_output_paths(registry, tpm_certs, test_tpm, tmp_path):
    (tmp_path / "afile").write_text("x\n")
    (tmp_path / "adir").mkdir()
    env = env_for(test_tpm, tmp_path)
    src = f"localhost:{registry.port}/x:1"
    for dest, words in ((f"docker-archive:{tmp_path / 'adir'}", "is a directory"),
                        (f"oci:{tmp_path / 'afile'}", "not a directory"),
                        ("docker-archive:/sys/img.tar", "cannot write"),
                        ("oci:/sys/layout", "cannot write")):
        proc = run_cli("pull", src, dest, "--cert-dir", str(tpm_certs), env=env)
        assert proc.returncode == 1 and words in one_line(proc), (dest, proc.stderr)


def test_killed_pull_leaves_nothing_the_next_pull_keeps(registry, tpm_certs, test_tpm, tmp_path):
    from tpmtls.lab import build_docker_archive

    image = build_docker_archive(tmp_path / "big.tar", [{"a.bin": 40_000_000}, {"b.bin": 40_000_000}])
    env = env_for(test_tpm, tmp_path)
    dest = f"localhost:{registry.port}/killed:1"
    assert run_cli("push", f"docker-archive:{image}", dest, "--cert-dir", str(tpm_certs), env=env).returncode == 0
    layout = tmp_path / "layout"
    blobs = layout / "blobs" / "sha256"
    stall = CuttingProxy(registry.port, hold_down_after=20_000_000)  # the kill falls mid-blob, however fast
    args = [sys.executable, "-m", "tpmtls.cli.pull", dest.replace(str(registry.port), str(stall.port)), f"oci:{layout}",
            "--cert-dir", str(tpm_certs)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**child_env(), **env})

    def partial_blob_or_exit() -> bool:
        return proc.poll() is not None or any(size > 0 for size in partial_sizes(blobs))

    try:
        wait_until(partial_blob_or_exit, 60, "the pull writing a partial blob", interval=0.01)
        assert proc.poll() is None, "the pull finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        stall.close()
    assert [p for p in blobs.iterdir() if p.name.startswith(".tmp-")]  # what a killed pull leaves
    again = run_cli("pull", dest, f"oci:{layout}", "--cert-dir", str(tpm_certs), env=env)
    assert again.returncode == 0, again.stderr
    assert not [p for p in blobs.iterdir() if p.name.startswith(".tmp-")]
    assert os.listdir(layout)
