"""Registry authentication: Basic (htpasswd) and Bearer tokens, credentials as docker finds them."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from support.commands import one_line
from support.registry import env_for, run_cli
from support.tokens import (  # noqa: F401
    PASSWORD,
    REFRESH,
    USER,
    TokenServer,
    htpasswd_registry,
    registry_with_token_server,
)


@pytest.fixture(scope="module")
def basic_registry(pki, tmp_path_factory):
    """Client certificates from the test CA *and* htpasswd (USER, PASSWORD)."""
    with htpasswd_registry(pki, tmp_path_factory.mktemp("basic"), pki.ca_file) as reg:
        yield reg


@pytest.fixture(scope="module")
def token_registry(pki, tmp_path_factory):
    with registry_with_token_server(pki, tmp_path_factory.mktemp("token")) as both:
        yield both


def docker_config(tmp_path: Path, content: dict) -> None:
    (tmp_path / "docker").mkdir(exist_ok=True)
    (tmp_path / "docker" / "config.json").write_text(json.dumps(content))


def auth_entry(user: str, password: str) -> dict:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def credential_helper(tmp_path: Path, user: str, password: str) -> dict[str, str]:
    """A docker-credential-* program on PATH that answers `get` like the real ones."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    helper = bindir / "docker-credential-tpmtlstest"
    answer = json.dumps({"ServerURL": "", "Username": user, "Secret": password})
    helper.write_text(f"#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread server\necho '{answer}'\n")
    helper.chmod(0o755)
    return {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}


@pytest.fixture(params=["basic", "token"])
def auth_registry(request, basic_registry, token_registry):
    return basic_registry if request.param == "basic" else token_registry[0]


def test_credentials_from_config_json(auth_registry, tpm_certs, small_image, test_tpm, tmp_path):
    host = f"localhost:{auth_registry.port}"
    docker_config(tmp_path, {"auths": {host: auth_entry(USER, PASSWORD)}})
    proc = run_cli("push", f"docker-archive:{small_image}", f"{host}/authed:1", "--cert-dir", str(tpm_certs),
                   env=env_for(test_tpm, tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1].startswith("1: digest: sha256:")


def test_credentials_from_helper(auth_registry, tpm_certs, small_image, test_tpm, tmp_path):
    host = f"localhost:{auth_registry.port}"
    docker_config(tmp_path, {"credHelpers": {host: "tpmtlstest"}})
    proc = run_cli("push", f"docker-archive:{small_image}", f"{host}/helped:1", "--cert-dir", str(tpm_certs),
                   env=env_for(test_tpm, tmp_path, **credential_helper(tmp_path, USER, PASSWORD)))
    assert proc.returncode == 0, proc.stderr


def test_password_stdin(auth_registry, tpm_certs, small_image, test_tpm, tmp_path):
    host = f"localhost:{auth_registry.port}"
    proc = run_cli("push", f"docker-archive:{small_image}", f"{host}/stdin:1", "--cert-dir", str(tpm_certs),
                   "--username", USER, "--password-stdin", env=env_for(test_tpm, tmp_path), stdin=PASSWORD + "\n")
    assert proc.returncode == 0, proc.stderr


def test_wrong_password_is_one_line(auth_registry, tpm_certs, small_image, test_tpm, tmp_path):
    host = f"localhost:{auth_registry.port}"
    docker_config(tmp_path, {"auths": {host: auth_entry(USER, "wrong")}})
    line = one_line(run_cli("push", f"docker-archive:{small_image}", f"{host}/denied:1", "--cert-dir",
                                    str(tpm_certs), env=env_for(test_tpm, tmp_path)))
    print(line)
    assert host in line and f"as {USER}" in line and ("authentication failed" in line or "refused" in line)


def test_no_credentials_is_one_line(auth_registry, tpm_certs, small_image, test_tpm, tmp_path):
    host = f"localhost:{auth_registry.port}"
    line = one_line(run_cli("push", f"docker-archive:{small_image}", f"{host}/anon:1", "--cert-dir",
                                    str(tpm_certs), env=env_for(test_tpm, tmp_path)))
    print(line)
    assert host in line


# ---- auth as docker does it, nothing in clear (docs/trust.md, "Registry credentials") ----------------


def test_identity_token_uses_the_refresh_grant(token_registry, tpm_certs, small_image, test_tpm, tmp_path):
    reg, tokens = token_registry
    host = f"localhost:{reg.port}"
    docker_config(tmp_path, {"auths": {host: {"auth": "", "identitytoken": REFRESH}}})
    before = len(tokens.log)
    proc = run_cli("push", f"docker-archive:{small_image}", f"{host}/identity:1", "--cert-dir", str(tpm_certs),
                   env=env_for(test_tpm, tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert tokens.log[before:] and all(method == "POST" for method, _ in tokens.log[before:])


def test_identity_token_from_a_helper(token_registry, tpm_certs, small_image, test_tpm, tmp_path):
    reg, tokens = token_registry
    host = f"localhost:{reg.port}"
    docker_config(tmp_path, {"credHelpers": {host: "tpmtlstest"}})
    proc = run_cli("push", f"docker-archive:{small_image}", f"{host}/identity-helper:1", "--cert-dir",
                   str(tpm_certs), env=env_for(test_tpm, tmp_path, **credential_helper(tmp_path, "<token>", REFRESH)))
    assert proc.returncode == 0, proc.stderr


def test_one_token_per_scope_and_no_catalog_scope(token_registry, tpm_certs, small_image, test_tpm, tmp_path):
    reg, tokens = token_registry
    host = f"localhost:{reg.port}"
    docker_config(tmp_path, {"auths": {host: auth_entry(USER, PASSWORD)}})
    before = len(tokens.log)
    proc = run_cli("push", f"docker-archive:{small_image}", f"{host}/shared:1", "--cert-dir", str(tpm_certs),
                   "--jobs", "4", env=env_for(test_tpm, tmp_path))
    assert proc.returncode == 0, proc.stderr
    scopes = [scope for _, scope in tokens.log[before:]]
    print(scopes)
    assert not any("catalog" in s for s in scopes)
    assert scopes.count("repository:shared:pull,push") == 1  # 4 parallel jobs, one token


def test_unparseable_auth_names_the_file(basic_registry, tpm_certs, small_image, test_tpm, tmp_path):
    host = f"localhost:{basic_registry.port}"
    docker_config(tmp_path, {"auths": {host: {"auth": "not base64 at all!"}}})
    line = one_line(run_cli("push", f"docker-archive:{small_image}", f"{host}/x:1", "--cert-dir",
                                    str(tpm_certs), env=env_for(test_tpm, tmp_path)))
    assert str(tmp_path / "docker" / "config.json") in line and "auth" in line


@pytest.fixture(scope="module")
def resolved_registry(pki, tmp_path_factory):
    """A token registry whose realm names a host that only --resolve makes reachable."""
    with registry_with_token_server(pki, tmp_path_factory.mktemp("resolved"), "server.domain.com") as both:
        yield both


def test_resolve_applies_to_the_token_server(resolved_registry, tpm_certs, small_image, test_tpm, tmp_path):
    reg, tokens = resolved_registry
    host = f"server.domain.com:{reg.port}"
    proc = run_cli("push", f"docker-archive:{small_image}", f"{host}/resolved:1", "--cert-dir", str(tpm_certs),
                   "--resolve", f"{host}:127.0.0.1", "--resolve", f"server.domain.com:{tokens.port}:127.0.0.1",
                   "--username", USER, "--password-stdin", env=env_for(test_tpm, tmp_path), stdin=PASSWORD + "\n")
    assert proc.returncode == 0, proc.stderr
    assert tokens.log


def test_plain_http_token_realm_gets_no_credentials(pki, tpm_certs, small_image, test_tpm, tmp_path):
    from support.peers import CountingListener

    with CountingListener() as listener, \
            registry_with_token_server(pki, tmp_path, realm=f"http://127.0.0.1:{listener.port}/token") as (reg, _):
        line = one_line(run_cli(
            "push", f"docker-archive:{small_image}", f"localhost:{reg.port}/clear:1", "--cert-dir",
            str(tpm_certs), "--username", USER, "--password-stdin", env=env_for(test_tpm, tmp_path),
            stdin=PASSWORD + "\n"))
    print(line)
    assert f"http://127.0.0.1:{listener.port}/token" in line and "not https" in line
    assert listener.connections == 0


def test_plain_http_upload_location_gets_no_layer_data(pki, tpm_certs, small_image, test_tpm, tmp_path):
    from support.peers import CountingListener, HostileRegistry

    with CountingListener() as listener:
        with HostileRegistry(pki, f"http://127.0.0.1:{listener.port}/upload/1") as hostile:
            line = one_line(run_cli(
                "push", f"docker-archive:{small_image}", f"localhost:{hostile.port}/clear:1", "--cert-dir",
                str(tpm_certs), "--username", USER, "--password-stdin", env=env_for(test_tpm, tmp_path),
                stdin=PASSWORD + "\n"))
    print(line)
    assert f"http://127.0.0.1:{listener.port}/upload/1" in line and "not https" in line
    assert listener.connections == 0


def test_foreign_upload_location_gets_no_authorization(pki, tpm_certs, small_image, test_tpm, tmp_path):
    from support.peers import HostileRegistry

    with HostileRegistry(pki) as storage, HostileRegistry(pki) as hostile:
        hostile.upload_location = f"https://server.domain.com:{storage.port}/upload/1"
        proc = run_cli("push", f"docker-archive:{small_image}", f"localhost:{hostile.port}/foreign:1",
                       "--cert-dir", str(tpm_certs), "--username", USER, "--password-stdin",
                       "--resolve", f"server.domain.com:{storage.port}:127.0.0.1",
                       env=env_for(test_tpm, tmp_path), stdin=PASSWORD + "\n")
    print(proc.stderr, storage.seen[:3])
    patches = [s for s in storage.seen if s[0] == "PATCH"]
    assert patches, storage.seen  # the layer went to the storage host (over https) ...
    assert all(auth is None for _, _, auth in storage.seen)  # ... without the registry's credentials
    assert any(auth for _, _, auth in hostile.seen)  # which the registry itself did get


def test_pull_redirects_get_no_authorization_and_never_plain_http(pki, tpm_certs, test_tpm, tmp_path):
    from support.peers import CountingListener, HostileRegistry

    with CountingListener() as listener:
        with HostileRegistry(pki, f"http://127.0.0.1:{listener.port}/blob") as hostile:
            line = one_line(run_cli(
                "pull", f"localhost:{hostile.port}/r:1", f"oci:{tmp_path / 'o'}", "--cert-dir", str(tpm_certs),
                "--username", USER, "--password-stdin", env=env_for(test_tpm, tmp_path), stdin=PASSWORD + "\n"))
    assert f"http://127.0.0.1:{listener.port}/blob" in line and "not https" in line
    assert listener.connections == 0
    with HostileRegistry(pki) as storage, HostileRegistry(pki) as hostile:
        hostile.upload_location = f"https://server.domain.com:{storage.port}/blob"
        run_cli("pull", f"localhost:{hostile.port}/r:1", f"oci:{tmp_path / 'o2'}", "--cert-dir", str(tpm_certs),
                "--resolve", f"server.domain.com:{storage.port}:127.0.0.1", "--username", USER, "--password-stdin",
                env=env_for(test_tpm, tmp_path), stdin=PASSWORD + "\n")
    assert [s for s in storage.seen if s[0] == "GET"]  # the redirect was followed, over https ...
    assert all(auth is None for _, _, auth in storage.seen)  # ... without the registry's credentials
