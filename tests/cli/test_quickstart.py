"""`make quickstart`, the README's main-job command, runs green."""

from __future__ import annotations

import os
import shutil
import subprocess

from support import ROOT
from support.commands import require


def test_make_quickstart():
    require("make")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENSSL_CONF", "TPMTLS_TCTI")}
    proc = subprocess.run(["make", "-s", "-C", str(ROOT), "quickstart"], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    out = proc.stdout
    for step in range(1, 10):
        assert f"[{step}/9]" in out
    assert "latest: digest: sha256:" in out
    assert out.count(": refused: ") == 2
    assert "refused our client certificate" in out and "none is configured" in out
    assert "matches the push" in out
    assert out.strip().endswith("quickstart passed")


def test_ca_and_certs_install_commands(cli, tmp_path):
    cli("ca", "init", "ca", "--name", "Test CA")
    assert (tmp_path / "ca" / "ca.key").stat().st_mode & 0o777 == 0o600
    cli("key", "create", "--out", "client.key")
    cli("csr", "--key", "client.key", "--subject", "CN=node-1", "--out", "client.csr")
    cli("ca", "issue", "ca", "--csr", "client.csr", "--client", "--out", "client.cert")
    out = cli("certs", "install", "server.domain.com:5000", "--cert", "client.cert", "--key", "client.key",
              "--ca", "ca/ca.crt", "--root", "certs.d").stdout
    target = tmp_path / "certs.d" / "server.domain.com:5000"
    assert sorted(p.name for p in target.iterdir()) == ["ca.crt", "client.cert", "client.key"]
    assert (target / "client.key").read_text().startswith("-----BEGIN TSS2 PRIVATE KEY-----")
    assert "installed" in out
    if shutil.which("openssl"):
        verify = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "ca" / "ca.crt"),
                                 str(tmp_path / "client.cert")], capture_output=True, text=True)
        assert verify.returncode == 0, verify.stderr
    assert "needs --san" in cli.fails("ca", "issue", "ca", "--csr", "client.csr", "--server", "--out", "s.crt")
    assert "already holds a CA" in cli.fails("ca", "init", "ca", "--name", "again")
    assert "software key" in cli.fails("certs", "install", "h:1", "--cert", "client.cert", "--key",
                                       str(tmp_path / "ca" / "ca.key"), "--ca", "ca/ca.crt", "--root", "certs.d")


def test_quickstart_keeps_software_keys_private(tmp_path):
    """Software private keys it writes are 0600; its output is on stdout, failures on stderr."""
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("OPENSSL_CONF", "TPMTLS_TCTI")}
    work = tmp_path / "qs"
    proc = subprocess.run([sys.executable, "-m", "tpmtls", "quickstart", "--workdir", str(work)], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr == ""
    keys = [p for p in work.rglob("*") if p.is_file() and p.suffix in (".key", ".pem")
            and b"PRIVATE KEY-----" in p.read_bytes()[:100] and b"TSS2" not in p.read_bytes()[:100]]
    assert keys
    assert all(p.stat().st_mode & 0o077 == 0 for p in keys), [(str(p), oct(p.stat().st_mode)) for p in keys]
