"""Every README and docs example and TLS entry point, run as its own process: it exits with its own status.

A crash at interpreter exit (OpenSSL freeing a TPM key in the final garbage collection)
or a stray "Exception ignored" never shows in an in-process test, so each script here
runs as a user runs it, holds its TLS context until exit (module globals and a
reference cycle), and the test checks the exit status and the whole of stderr.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import tpmtls
from support import ROOT
from tpmtls.lab.process import child_env

# What each entry point does against `openssl s_server -Verify 1 -www` (client certificate
# required), keeping what it made in module globals and in a reference cycle.
ENTRY_POINTS = {
    "ssl_context+http.client": """
        import http.client
        ctx = tpmtls.ssl_context(CERT, KEY, CA)
        conn = http.client.HTTPSConnection("localhost", PORT, context=ctx, timeout=30)
        conn.request("GET", "/")
        body = conn.getresponse().read()
    """,
    "requests_session": """
        session = tpmtls.requests_session(CERT, KEY, CA)
        body = session.get(f"https://localhost:{PORT}/", timeout=30).content
        session.close()
    """,
    "pyopenssl_context": """
        import socket
        from OpenSSL import SSL
        ctx = tpmtls.pyopenssl_context(CERT, KEY, CA, hostname="localhost")
        sock = socket.create_connection(("127.0.0.1", PORT), timeout=30)
        sock.settimeout(None)  # pyOpenSSL reads a timed socket as non-blocking; the test bounds the process
        conn = SSL.Connection(ctx, sock)
        conn.set_tlsext_host_name(b"localhost")
        conn.set_connect_state()
        conn.do_handshake()
        conn.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
        body = b""
        while True:
            try:
                chunk = conn.recv(65536)
            except (SSL.ZeroReturnError, SSL.SysCallError):
                break
            if not chunk:
                break
            body += chunk
    """,
    "inject+requests": """
        import requests
        tpmtls.inject_into_ssl()
        body = requests.get(f"https://localhost:{PORT}/", cert=(CERT, KEY), verify=CA, timeout=30).content
    """,
    "inject+docker-py-TLSConfig": """
        import docker
        tpmtls.inject_into_ssl()
        tls = docker.tls.TLSConfig(client_cert=(CERT, KEY), ca_cert=CA, verify=True)
        api = docker.APIClient(base_url=f"https://localhost:{PORT}", tls=tls, version="1.41", timeout=30)
        body = api.get(f"https://localhost:{PORT}/").content
    """,
    "asyncio.open_connection": """
        import asyncio
        ctx = tpmtls.ssl_context(CERT, KEY, CA)

        async def fetch():
            reader, writer = await asyncio.open_connection("127.0.0.1", PORT, ssl=ctx, server_hostname="localhost")
            writer.write(b"GET / HTTP/1.0\\r\\n\\r\\n")
            data = await reader.read()
            writer.close()
            return data

        body = asyncio.run(fetch())
    """,
}

ENDINGS = {
    "exit 0": ("", 0),
    "sys.exit(3)": ("sys.exit(3)", 3),
    "uncaught exception": ("raise RuntimeError('the script failed on purpose')", 1),
}


def _script(body: str, ending: str, cert: Path, key: Path, ca: Path, port: int) -> str:
    return "\n".join([
        "import sys",
        "import tpmtls",
        f"CERT, KEY, CA, PORT = {str(cert)!r}, {str(key)!r}, {str(ca)!r}, {port}",
        textwrap.dedent(body),
        "assert b'Client certificate' in body or b'BEGIN CERTIFICATE' in body or b's_server' in body, body[:300]",
        "print('handshake ok', len(body))",
        "cycle = {'contexts': [v for v in list(globals().values()) if v is not None]}",
        "cycle['self'] = cycle  # only the final garbage collection frees this",
        ending,
    ])


def _run(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    path = cwd / "example.py"
    path.write_text(script)
    return subprocess.run([sys.executable, str(path)], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def _assert_clean_stderr(proc: subprocess.CompletedProcess[str], expected: int, ending: str) -> None:
    assert proc.returncode == expected, f"exit {proc.returncode}, wanted {expected}: {proc.stderr[-2000:]}"
    for bad in ("Fatal Python error", "Segmentation fault", "Exception ignored", "SystemError", "WARNING"):
        assert bad not in proc.stderr, proc.stderr[-2000:]
    if expected == 1:
        assert proc.stderr.count("Traceback") == 1, proc.stderr
        assert proc.stderr.rstrip().endswith("RuntimeError: the script failed on purpose"), proc.stderr
    else:
        assert proc.stderr == "", proc.stderr


@pytest.fixture
def example_env(test_tpm) -> dict[str, str]:
    # docker-py's TLSConfig is overridden by REQUESTS_CA_BUNDLE (this machine sets one;
    # docs/facts-openssl.md); here only the exit behaviour is under test, so leave the user's CA alone.
    env = child_env(test_tpm.env)
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        env.pop(name, None)
    return env


@pytest.mark.parametrize("ending", list(ENDINGS))
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_entry_point_exits_with_its_own_status(entry, ending, tpm_client, pki, s_server, tmp_path, example_env):
    cert, key = tpm_client["ecc-p256"]
    code, expected = ENDINGS[ending]
    proc = _run(_script(ENTRY_POINTS[entry], code, cert, key, pki.ca_file, s_server.port), tmp_path, example_env)
    _assert_clean_stderr(proc, expected, ending)
    assert "handshake ok" in proc.stdout


def _python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), re.S)


def _docs_python_blocks() -> list[tuple[str, str]]:
    """(page, block) for every ```python block in docs/ that needs no Docker daemon.

    Blocks calling docker_client need a TLS dockerd: tests/docker/test_daemon_client.py runs them.
    """
    return [(page.name, block) for page in sorted((ROOT / "docs").glob("*.md"))
            for block in _python_blocks(page) if "docker_client" not in block]


def _certify(tpm, pki, directory: Path) -> None:
    """client.crt and ca.crt beside the client.key a block made: the TLS examples name them."""
    key = tpm.load_key(directory / "client.key")
    (directory / "client.crt").write_bytes(pki.issue(key.public_key(), "readme-client", "readme.crt").read_bytes())
    (directory / "ca.crt").write_bytes(pki.ca_file.read_bytes())


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_entry_point_on_the_device_exits_with_its_own_status(entry, device_tpm, pki, s_server, tmp_path):
    """The default TCTI's path (/dev/tpmrm0, the lab's stand-in): the same exit, the same clean stderr."""
    key = tmp_path / "device.key"
    made = tpmtls.connect(device_tpm.tcti).create_key("ecc-p256", key)
    cert = pki.issue(made.public_key(), "tpm-client-device", "device-client.crt")
    env = child_env(device_tpm.env)
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        env.pop(name, None)
    code, expected = ENDINGS["sys.exit(3)"]
    proc = _run(_script(ENTRY_POINTS[entry], code, cert, key, pki.ca_file, s_server.port), tmp_path, env)
    _assert_clean_stderr(proc, expected, "sys.exit(3)")
    assert "handshake ok" in proc.stdout


def test_readme_examples_run_verbatim(tpm, pki, tmp_path, example_env):
    """Each ```python block of the README, unchanged, in order, in one directory."""
    blocks = _python_blocks(ROOT / "README.md")
    assert len(blocks) >= 2
    for i, block in enumerate(blocks):
        if i == 1:  # the TLS block names client.crt and ca.crt next to the key the first block made
            _certify(tpm, pki, tmp_path)
        proc = _run(block, tmp_path, example_env)
        assert proc.returncode == 0, f"README block {i + 1} exited {proc.returncode}: {proc.stderr[-2000:]}"
        assert proc.stderr == "", f"README block {i + 1}: {proc.stderr[-2000:]}"


def test_docs_examples_run_verbatim(tpm, pki, tmp_path, example_env):
    """Each ```python block of docs/*.md, unchanged, in a directory holding the README's
    client.key, client.crt and ca.crt (what a reader following on from the README has)."""
    blocks = _docs_python_blocks()
    assert blocks, "no ```python block in docs/: tests/cli/test_docs.py expects at least docs/testing.md's"
    tpm.create_key("ecc-p256", path=tmp_path / "client.key")
    _certify(tpm, pki, tmp_path)
    for page, block in blocks:
        proc = _run(block, tmp_path, example_env)
        assert proc.returncode == 0, f"docs/{page} block exited {proc.returncode}: {proc.stderr[-2000:]}"
        assert proc.stderr == "", f"docs/{page}: {proc.stderr[-2000:]}"


def test_context_freed_while_an_exception_propagates(tpm_client, pki, tmp_path, example_env):
    """A TPM-key context dropped while an error unwinds: the caller sees that error and nothing else."""
    cert, key = tpm_client["ecc-p256"]
    script = textwrap.dedent(f"""
        import json
        import tpmtls

        def configure():
            contexts = [tpmtls.ssl_context({str(cert)!r}, {str(key)!r}, {str(pki.ca_file)!r}) for _ in range(3)]
            return json.loads("{{ not json")  # a malformed config file, found after the contexts were made

        configure()
    """)
    proc = _run(script, tmp_path, example_env)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("Traceback") == 1 and "Exception ignored" not in proc.stderr, proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith("json.decoder.JSONDecodeError"), proc.stderr
