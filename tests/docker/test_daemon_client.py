"""`tpmtls.docker_client()` against a real dockerd --tlsverify: DOCKER_* honoured, the TPM key
signs, only ca.pem is trusted (whatever REQUESTS_CA_BUNDLE says), one clear error per bad input."""

from __future__ import annotations

import http.server
import shutil
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from support import ROOT
from support.daemon import busybox_archive, run
from tpmtls.errors import TpmtlsError
from tpmtls.testing import free_port

IMAGE = "busybox-tpmtls:1"

USER_SCRIPT = textwrap.dedent("""
    import sys
    from tpmtls.docker.client import docker_client
    from tpmtls.tpm.pool import default_pool

    client = docker_client()
    print("api", client.version()["ApiVersion"])
    with open(sys.argv[1], "rb") as f:
        loaded = client.images.load(f.read())
    print("loaded", loaded[0].tags)
    print("listed", sorted(t for i in client.images.list() for t in i.tags))
    print("run", client.containers.run("%(image)s", ["echo", "hello from a container"], remove=True).decode().strip())
    box = client.containers.run("%(image)s", ["sleep", "60"], detach=True)
    try:
        result = box.exec_run(["sh", "-c", "echo exec says hi; echo to stderr >&2"])
        print("exec", result.exit_code, sorted(result.output.decode().split("\\n")))
        sock = box.exec_run(["sh", "-c", "read line; echo got: $line"], stdin=True, socket=True).output
        sock = getattr(sock, "_sock", sock)  # over TLS docker-py hands out the SSLSocket itself
        sock.sendall(b"tpm stdin\\n")
        data = b""
        for _ in range(50):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
            if b"got:" in data:
                break
        print("stdin", b"got: tpm stdin" in data)
        sock.close()
    finally:
        box.remove(force=True)
    print("signatures", default_pool().stats().signatures)
    client.close()
""" % {"image": IMAGE})


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return busybox_archive(tmp_path_factory.mktemp("busybox") / "busybox.tar")


def docker_env(port: int, cert_path: Path, **extra: str) -> dict[str, str]:
    return {"DOCKER_HOST": f"tcp://127.0.0.1:{port}", "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(cert_path),
            **extra}


def test_docker_client_from_env_with_a_tpm_key_runs_the_whole_api(daemon_pki, tls_dockerd, archive, tmp_path):
    _daemon, port = tls_dockerd
    # a bundle of another CA in the variables requests honours: ours must trust ca.pem only
    other = daemon_pki.root / "foreign-ca" / "ca.crt"
    env = {**daemon_pki.env, **docker_env(port, daemon_pki.tpm_dir), "REQUESTS_CA_BUNDLE": str(other),
           "CURL_CA_BUNDLE": str(other), "HOME": str(tmp_path)}
    script = tmp_path / "user.py"
    script.write_text(USER_SCRIPT)
    proc = run([sys.executable, str(script), str(archive)], env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    assert out["api"].startswith("1.")
    assert out["loaded"] == f"['{IMAGE}']"
    assert IMAGE in out["listed"]
    assert out["run"] == "hello from a container"
    assert out["exec"] == "0 ['', 'exec says hi', 'to stderr']"
    assert out["stdin"] == "True"
    assert int(out["signatures"]) >= 1  # the handshake was signed in the TPM
    assert proc.stderr == ""


def test_only_the_named_ca_is_trusted_whatever_requests_ca_bundle_says(daemon_pki, tls_dockerd, tmp_path, monkeypatch):
    from tpmtls.docker.client import docker_client

    _daemon, port = tls_dockerd
    wrong = tmp_path / "wrong-ca"
    shutil.copytree(daemon_pki.tpm_dir, wrong)
    shutil.copy(daemon_pki.root / "foreign-ca" / "ca.crt", wrong / "ca.pem")
    for k, v in docker_env(port, wrong, REQUESTS_CA_BUNDLE=str(daemon_pki.ca), CURL_CA_BUNDLE=str(daemon_pki.ca)).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("TPMTLS_TCTI", daemon_pki.env["TPMTLS_TCTI"])
    with pytest.raises(TpmtlsError) as e:
        docker_client()
    assert f"the daemon's certificate is not signed by {wrong / 'ca.pem'}" in str(e.value)


def _one_line_error(monkeypatch, env: dict[str, str]) -> str:
    from tpmtls.docker.client import docker_client

    for k in ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(TpmtlsError) as e:
        docker_client()
    text = str(e.value)
    assert "\n" not in text and text
    return text


def test_bad_input_is_one_clear_error_each(daemon_pki, tls_dockerd, tmp_path, monkeypatch):
    _daemon, port = tls_dockerd
    monkeypatch.setenv("TPMTLS_TCTI", daemon_pki.env["TPMTLS_TCTI"])
    missing = tmp_path / "missing"
    shutil.copytree(daemon_pki.tpm_dir, missing)
    (missing / "key.pem").unlink()
    assert f"{missing / 'key.pem'}: missing" in _one_line_error(monkeypatch, docker_env(port, missing))

    mismatched = tmp_path / "mismatched"
    shutil.copytree(daemon_pki.tpm_dir, mismatched)
    shutil.copy(daemon_pki.soft_dir / "cert.pem", mismatched / "cert.pem")
    assert "does not belong to the key" in _one_line_error(monkeypatch, docker_env(port, mismatched))

    foreign = tmp_path / "foreign"
    shutil.copytree(daemon_pki.tpm_dir, foreign)
    for name in ("cert.pem", "key.pem"):
        shutil.copy(daemon_pki.foreign_dir / name, foreign / name)
    assert "refused our client certificate" in _one_line_error(monkeypatch, docker_env(port, foreign))

    assert "connection refused" in _one_line_error(monkeypatch, docker_env(free_port(), daemon_pki.tpm_dir))

    plain = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=plain.serve_forever, daemon=True).start()
    try:
        line = _one_line_error(monkeypatch, docker_env(plain.server_address[1], daemon_pki.tpm_dir))
    finally:
        plain.shutdown()
        plain.server_close()
    assert "does not speak TLS" in line

    line = _one_line_error(monkeypatch, {"DOCKER_HOST": "tcp://192.0.2.1:2375"})
    assert "without TLS" in line


def test_inject_into_ssl_lets_docker_py_itself_use_the_tpm_key(daemon_pki, tls_dockerd, tmp_path):
    _daemon, port = tls_dockerd
    script = tmp_path / "plain_docker_py.py"
    script.write_text(textwrap.dedent(f"""
        import docker, tpmtls
        tpmtls.inject_into_ssl()
        a = docker.from_env()
        print(a.version()["ApiVersion"])
        tls = docker.tls.TLSConfig(client_cert=("{daemon_pki.tpm_dir / 'cert.pem'}", "{daemon_pki.tpm_dir / 'key.pem'}"),
                                   ca_cert="{daemon_pki.ca}", verify=True)
        b = docker.DockerClient(base_url="tcp://127.0.0.1:{port}", tls=tls)
        print(b.version()["ApiVersion"])
        a.close(); b.close()
    """))
    env = {**daemon_pki.env, **docker_env(port, daemon_pki.tpm_dir), "HOME": str(tmp_path)}
    env["REQUESTS_CA_BUNDLE"] = env["CURL_CA_BUNDLE"] = ""  # docker-py's own TLSConfig would yield to them
    proc = run([sys.executable, str(script)], env=env)
    assert proc.returncode == 0, proc.stderr
    a, b = proc.stdout.split()
    assert a == b and a.startswith("1.")


def test_docs_docker_py_example_runs_verbatim(daemon_pki, tls_dockerd, archive, tmp_path):
    """docs/daemon.md's docker-py block, unchanged, as its own process, against the TLS daemon."""
    import re

    daemon, port = tls_dockerd
    page = (ROOT / "docs" / "daemon.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", page, re.S) if "docker_client" in b)
    local = {**daemon_pki.env, **daemon.env}
    for argv in (["docker", "load", "-i", str(archive)], ["docker", "tag", IMAGE, "alpine"]):
        proc = run(argv, env=local, timeout=120)
        assert proc.returncode == 0, proc.stderr
    script = tmp_path / "readme_docker.py"
    script.write_text(block)
    env = {**daemon_pki.env, **docker_env(port, daemon_pki.tpm_dir), "HOME": str(tmp_path)}
    proc = run([sys.executable, str(script)], env=env, timeout=300)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
