"""docker-credential-tpmtls with the real docker CLI and dockerd (`credsStore: tpmtls`):
docker login / push / logout through it, then tpmtls-push and tpmtls-pull with the entry."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tpmtls
from support.commands import one_line, require
from support.registry import env_for, rootfs_tar, run_cli, tpm_cert_dir
from support.tokens import htpasswd_registry
from tpmtls.lab.process import child_env

USER, PASSWORD = "pusher", "Tpm-sealed correct horse 4711"
NOT_FOUND = "credentials not found in native keychain"
DOCKER = "/usr/local/bin/docker" if os.path.exists("/usr/local/bin/docker") else "docker"


def helper_on_path(bindir: Path) -> dict[str, str]:
    """`docker-credential-tpmtls` as the docker CLI finds it: an executable on PATH that
    runs this checkout's helper (the installed console script does the same)."""
    bindir.mkdir(parents=True, exist_ok=True)
    root = Path(tpmtls.__file__).resolve().parent.parent
    script = bindir / "docker-credential-tpmtls"
    script.write_text(f'#!/bin/sh\nPYTHONPATH="{root}${{PYTHONPATH:+:$PYTHONPATH}}" '
                      f'exec "{sys.executable}" -m tpmtls.cli.credential_helper "$@"\n')
    script.chmod(0o755)
    return {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}


class Session:
    """One user's shell: docker CLI + helper + tpmtls CLIs with a temp DOCKER_CONFIG; keeps every output."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.outputs: list[str] = []

    def run(self, argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(argv, capture_output=True, text=True, env=child_env(self.env), input=stdin, timeout=300)
        assert "Traceback" not in proc.stderr, proc.stderr
        self.outputs += [proc.stdout, proc.stderr]
        return proc

    def docker(self, *args: str, stdin: str | None = None) -> str:
        proc = self.run([DOCKER, *args], stdin)
        assert proc.returncode == 0, f"docker {' '.join(args)}: {proc.stderr}"
        return proc.stdout

    def helper(self, action: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["docker-credential-tpmtls", action], capture_output=True, text=True,
                              env=child_env(self.env), input=stdin, timeout=120)
        assert proc.stderr == "", proc.stderr
        if action != "get":  # `get` answers with the secret: that is its job
            self.outputs.append(proc.stdout)
        return proc

    def tpmtls(self, module: str, *args: str) -> subprocess.CompletedProcess[str]:
        proc = run_cli(module, *args, env=self.env)
        self.outputs += [proc.stdout, proc.stderr]
        return proc


@pytest.fixture(scope="module")
def login_registry(pki, tmp_path_factory):
    """TLS + htpasswd on 127.0.0.1 without client certificates: dockerd reaches loopback
    registries as insecure-allowed, so `docker login` works against it."""
    with htpasswd_registry(pki, tmp_path_factory.mktemp("login-registry"), None, USER, PASSWORD) as reg:
        yield reg


@pytest.fixture(scope="module")
def mtls_basic_registry(pki, tmp_path_factory):
    """Client certificates from the test CA *and* htpasswd."""
    with htpasswd_registry(pki, tmp_path_factory.mktemp("mtls-basic"), pki.ca_file, USER, PASSWORD) as reg:
        yield reg


def session_for(test_tpm, tmp_path: Path, dockerd=None) -> Session:
    config = tmp_path / "docker"
    config.mkdir(parents=True)
    (config / "config.json").write_text(json.dumps({"credsStore": "tpmtls"}))
    extra = dict(dockerd.env) if dockerd is not None else {}
    return Session(env_for(test_tpm, tmp_path, **helper_on_path(tmp_path / "bin"), **extra))


def assert_secret_nowhere(session: Session, roots: list[Path]) -> None:
    forms = [PASSWORD.encode(), base64.b64encode(f"{USER}:{PASSWORD}".encode()), base64.b64encode(PASSWORD.encode())]
    for out in session.outputs:
        assert not any(f.decode() in out for f in forms), out
    checked = 0
    for root in roots:
        for path in [root] if root.is_file() else root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                checked += 1
                assert not any(f in data for f in forms), f"{path} holds the secret"
    assert checked > 0


def test_docker_login_push_logout_through_the_helper(dockerd, login_registry, tpm_certs, small_image, test_tpm,
                                                      tmp_path):
    require("htpasswd")
    host = f"127.0.0.1:{login_registry.port}"
    s = session_for(test_tpm, tmp_path, dockerd)
    store = tmp_path / "docker" / "tpmtls-credentials.json"

    # nothing stored yet: the helper answers the exact not-found text, exit 1
    missing = s.helper("get", host)
    assert (missing.returncode, missing.stdout) == (1, NOT_FOUND + "\n")

    assert "Login Succeeded" in s.docker("login", host, "--username", USER, "--password-stdin", stdin=PASSWORD + "\n")
    assert "unencrypted" not in s.outputs[-1], s.outputs[-1]  # docker's warning when no helper stores it
    config = json.loads((tmp_path / "docker" / "config.json").read_text())
    assert config["credsStore"] == "tpmtls" and config.get("auths", {}).get(host, {}) == {}, config
    assert json.loads(s.helper("list").stdout) == {host: USER}
    got = s.helper("get", host + "\n")
    assert got.returncode == 0 and json.loads(got.stdout) == {"ServerURL": host, "Username": USER, "Secret": PASSWORD}
    assert oct(store.stat().st_mode & 0o777) == "0o600"

    # the docker CLI gets the credentials back from the helper to push (the registry wants them)
    rootfs = rootfs_tar("hello.txt", b"an image pushed by the stock docker CLI with helper credentials\n")
    imported = subprocess.run([DOCKER, "import", "-", f"{host}/via-docker:1"], input=rootfs,
                              capture_output=True, env=child_env(s.env), timeout=120)
    assert imported.returncode == 0, imported.stderr
    pushed = s.docker("push", f"{host}/via-docker:1")
    assert "digest: sha256:" in pushed

    # tpmtls-push finds the same entry through credsStore
    push = s.tpmtls("push", f"docker-archive:{small_image}", f"{host}/via-tpmtls:1", "--cert-dir", str(tpm_certs))
    assert push.returncode == 0, push.stderr
    assert push.stdout.splitlines()[-1].startswith("1: digest: sha256:")

    # docker logout erases through the helper; afterwards nothing is found and the registry refuses
    s.docker("logout", host)
    assert json.loads(s.helper("list").stdout) == {}
    gone = s.helper("get", host)
    assert (gone.returncode, gone.stdout) == (1, NOT_FOUND + "\n")
    refused = s.tpmtls("push", f"docker-archive:{small_image}", f"{host}/via-tpmtls:2", "--cert-dir", str(tpm_certs))
    line = one_line(refused)
    assert host in line

    # the password was in no output, no log, and in no file in clear
    assert_secret_nowhere(s, [tmp_path, dockerd.log_path, login_registry.log_path, Path(test_tpm.workdir)])


def test_helper_entry_used_by_tpmtls_push_and_pull_over_mtls(mtls_basic_registry, tpm_certs, small_image, test_tpm,
                                                             tmp_path):
    host = f"localhost:{mtls_basic_registry.port}"
    s = session_for(test_tpm, tmp_path)
    stored = s.helper("store", json.dumps({"ServerURL": host, "Username": USER, "Secret": PASSWORD}))
    assert stored.returncode == 0, stored.stdout
    push = s.tpmtls("push", f"docker-archive:{small_image}", f"{host}/sealed:1", "--cert-dir", str(tpm_certs))
    assert push.returncode == 0, push.stderr
    pull = s.tpmtls("pull", f"{host}/sealed:1", f"oci:{tmp_path / 'pulled'}", "--cert-dir", str(tpm_certs))
    assert pull.returncode == 0, pull.stderr
    assert (tmp_path / "pulled" / "index.json").exists()
    assert_secret_nowhere(s, [tmp_path, mtls_basic_registry.log_path])


def test_store_copied_to_another_tpm(mtls_basic_registry, pki, small_image, test_tpm, fresh_tpm, tmp_path):
    """The store file on a second machine (its own software TPM): one clear line, from the
    helper and from tpmtls-push, and the secret nowhere."""
    host = f"localhost:{mtls_basic_registry.port}"
    here = session_for(test_tpm, tmp_path / "here")
    assert here.helper("store", json.dumps({"ServerURL": host, "Username": USER, "Secret": PASSWORD})).returncode == 0
    there = session_for(fresh_tpm, tmp_path / "there")
    shutil.copy(tmp_path / "here" / "docker" / "tpmtls-credentials.json", tmp_path / "there" / "docker")
    assert json.loads(there.helper("list").stdout) == {host: USER}  # usernames are not secret
    got = there.helper("get", host)
    assert got.returncode == 1 and len(got.stdout.splitlines()) == 1
    assert "sealed to another TPM" in got.stdout and f"docker login {host}" in got.stdout
    there.outputs.append(got.stdout)
    # the second machine has a client certificate of its own TPM: only the credentials fail
    certs = tpm_cert_dir(tmp_path / "there-certs", pki, tpmtls.connect(fresh_tpm.tcti))
    push = there.tpmtls("push", f"docker-archive:{small_image}", f"{host}/copied:1", "--cert-dir", str(certs))
    line = one_line(push)
    print(line)
    assert "docker-credential-tpmtls" in line and "another TPM" in line
    # logging in again there (what the line says) replaces the entry with one sealed to that TPM
    again = there.helper("store", json.dumps({"ServerURL": host, "Username": USER, "Secret": PASSWORD}))
    assert again.returncode == 0, again.stdout
    push = there.tpmtls("push", f"docker-archive:{small_image}", f"{host}/copied:1", "--cert-dir", str(certs))
    assert push.returncode == 0, push.stderr
    assert_secret_nowhere(there, [tmp_path / "there"])
