"""The main job's spelling with a real dockerd: push a daemon image to server.domain.com:PORT/alpine."""

from __future__ import annotations

import subprocess

from support.commands import one_line
from support.registry import env_for, rootfs_tar, run_cli, skopeo_raw, tpm_cert_dir
from tpmtls.lab.process import child_env


def docker(dockerd, *args: str, input: bytes | None = None) -> str:
    proc = subprocess.run(["docker", *args], env={**child_env(), **dockerd.env}, input=input, capture_output=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout.decode()


def test_mission_push_and_pull_with_dockerd(dockerd, registry, pki, tpm, soft_certs, test_tpm, tmp_path):
    rootfs = rootfs_tar("hello.txt", b"a tiny image made by the test\n")
    image_id = docker(dockerd, "import", "-", "demo-src:1", input=rootfs).strip()

    name = f"server.domain.com:{registry.port}"
    tpm_cert_dir(tmp_path / "certs.d" / name, pki, tpm)  # certs.d named like Docker's: host:port
    env = env_for(test_tpm, tmp_path, **dockerd.env)
    resolve = ["--resolve", f"{name}:127.0.0.1", "--certs-root", str(tmp_path / "certs.d")]
    proc = run_cli("push", "demo-src:1", f"{name}/alpine", *resolve, env=env)
    assert proc.returncode == 0, proc.stderr
    _, digest = skopeo_raw(f"localhost:{registry.port}/alpine:latest", soft_certs)
    assert proc.stdout.splitlines()[-1].startswith(f"latest: digest: {digest} size: ")

    docker(dockerd, "rmi", "demo-src:1")
    pulled = run_cli("pull", f"{name}/alpine", "docker-daemon:", *resolve, env=env)
    assert pulled.returncode == 0, pulled.stderr
    images = docker(dockerd, "images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}")
    assert f"{name}/alpine:latest {image_id[7:19]}" in images  # the same image came back


def test_unknown_daemon_image(dockerd, registry, tpm_certs, test_tpm, tmp_path):
    proc = run_cli("push", "no-such-image:1", f"localhost:{registry.port}/x:1", "--cert-dir", str(tpm_certs),
                   env=env_for(test_tpm, tmp_path, **dockerd.env))
    assert "no-such-image:1: no such image in the local Docker daemon" in one_line(proc)


def test_registry_checked_before_the_daemon_saves(dockerd, registry, pki, test_tpm, tmp_path):
    """A registry that refuses us is found out before `docker save` runs."""
    import time

    from support.peers import Pki
    from support.registry import cert_dir

    image_id = docker(dockerd, "import", "-", "unsaved:1", input=rootfs_tar("x.txt", b"x\n")).strip()
    stranger = Pki(tmp_path / "other", cn="not the registry's CA")
    cert, key = stranger.software_client("stranger")
    certs = cert_dir(tmp_path / "c", pki, cert, key)
    since = str(int(time.time()) - 1)
    proc = run_cli("push", "unsaved:1", f"localhost:{registry.port}/x:1", "--cert-dir", str(certs),
                   env=env_for(test_tpm, tmp_path, **dockerd.env))
    assert "refused our client certificate" in one_line(proc)
    until = str(int(time.time()) + 1)
    events = docker(dockerd, "events", "--since", since, "--until", until, "--filter", "type=image",
                    "--format", "{{.Action}} {{.Actor.ID}}")
    assert f"save {image_id}" not in events.splitlines(), events
