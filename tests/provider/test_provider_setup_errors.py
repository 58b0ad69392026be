"""Bad TLS set-up gives one clear line: wrong certificate, other TPM, password, provider state."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import tpmtls
from support.commands import require
from tpmtls.testing import SwTpm

PATHS = ["stdlib", "pyopenssl"]


def context(path, cert, key, ca, **kw):
    if path == "stdlib":
        return tpmtls.ssl_context(cert, key, ca, **kw)
    return tpmtls.pyopenssl_context(cert, key, ca, hostname="localhost", **kw)


@pytest.mark.parametrize("path", PATHS)
def test_certificate_of_another_key(path, tpm_client, pki, test_tpm):
    cert, _ = tpm_client["ecc-p256"]
    _, other_key = tpm_client["ecc-p384"]
    with pytest.raises(tpmtls.TlsSetupError) as err:
        context(path, cert, other_key, pki.ca_file, tcti=test_tpm.tcti)
    assert str(cert) in str(err.value) and "does not belong to the key" in str(err.value)


@pytest.mark.parametrize("path", PATHS)
def test_key_file_for_another_tpm(path, tpm_client, pki, tmp_path):
    require("swtpm")
    cert, key = tpm_client["rsa2048"]
    with SwTpm(tmp_path / "other") as other:
        with pytest.raises(tpmtls.TlsSetupError) as err:
            context(path, cert, key, pki.ca_file, tcti=other.tcti)
        tpmtls.tpm.default_pool(other.tcti).close()
    msg = str(err.value)
    assert str(key) in msg and "parent 0x40000001" in msg and "different TPM" in msg


@pytest.mark.parametrize("path", PATHS)
def test_password_protected_key(path, tpm, pki, s_server, test_tpm):
    from support.tls_clients import client_subject, pyopenssl_get, stdlib_get

    key_path = pki.dir / f"pw-{path}.key"
    key = tpm.create_key("ecc-p256", key_path, password="open sesame")
    cert = pki.issue(key.public_key(), f"pw-{path}", f"pw-{path}.crt")
    ctx = context(path, cert, key_path, pki.ca_file, tcti=test_tpm.tcti, password="open sesame")
    page = (stdlib_get if path == "stdlib" else pyopenssl_get)(ctx, s_server.port)
    assert client_subject(page) == f"CN=pw-{path}"
    with pytest.raises(tpmtls.TlsSetupError) as err:
        context(path, cert, key_path, pki.ca_file, tcti=test_tpm.tcti, password="wrong")
    assert f"{key_path}: wrong password" in str(err.value)
    with pytest.raises(tpmtls.TlsSetupError, match="has a password"):
        context(path, cert, key_path, pki.ca_file, tcti=test_tpm.tcti)


def run_python(code: str, env: dict[str, str], pythonpath: str | None = None,
               args: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env}
    full.pop("OPENSSL_CONF", None)
    if pythonpath:
        full["PYTHONPATH"] = pythonpath
    # cwd: not the source tree, whose tpmtls/ would shadow the one under test
    return subprocess.run([sys.executable, *args, "-c", textwrap.dedent(code)], env=full, capture_output=True,
                          text=True, timeout=120, cwd=pythonpath.split(os.pathsep)[0] if pythonpath else None)


def without_editable_install(copy: Path) -> str:
    """PYTHONPATH for `python -S`: our copy first, then the dependencies (no .pth import hooks)."""
    import site

    return os.pathsep.join([str(copy), *site.getsitepackages()])


def test_cryptography_imported_first(tpm_client, pki, test_tpm):
    cert, key = tpm_client["ecc-p256"]
    proc = run_python(f"""
        import cryptography.x509, OpenSSL  # before tpmtls: too late for its OpenSSL
        import tpmtls
        tpmtls.ssl_context({str(cert)!r}, {str(key)!r}, {str(pki.ca_file)!r})   # stdlib path still works
        print("stdlib ok")
        try:
            tpmtls.pyopenssl_context({str(cert)!r}, {str(key)!r}, {str(pki.ca_file)!r}, hostname="localhost")
        except tpmtls.ProviderError as e:
            print("error:", e)
    """, test_tpm.env)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert "stdlib ok" in proc.stdout, proc.stderr
    assert "error: cryptography was imported before tpmtls" in proc.stdout
    assert "import tpmtls first" in proc.stdout


def test_provider_not_built(tpm_client, pki, test_tpm, tmp_path: Path):
    """A tpmtls without its compiled shim: each TLS entry point and doctor say so in one line."""
    copy = tmp_path / "site"
    shutil.copytree(Path(tpmtls.__file__).parent, copy / "tpmtls", ignore=shutil.ignore_patterns("_shim*.so"))
    cert, key = tpm_client["ecc-p256"]
    proc = run_python(f"""
        import tpmtls
        assert tpmtls.__file__.startswith({str(copy)!r})
        for fn in (tpmtls.ssl_context, tpmtls.pyopenssl_context):
            try:
                extra = {{"hostname": "localhost"}} if fn is tpmtls.pyopenssl_context else {{}}
                fn({str(cert)!r}, {str(key)!r}, {str(pki.ca_file)!r}, **extra)
            except tpmtls.ProviderError as e:
                print("error:", e)
    """, test_tpm.env, pythonpath=without_editable_install(copy), args=("-S",))
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("error:")]
    assert len(lines) == 2, proc.stdout + proc.stderr
    assert all("shim provider is not built" in line and "pip install" in line for line in lines)
    doctor = subprocess.run([sys.executable, "-S", "-m", "tpmtls", "doctor"], capture_output=True, text=True,
                            env={**os.environ, **test_tpm.env, "PYTHONPATH": without_editable_install(copy)},
                            timeout=120, cwd=copy)
    assert doctor.returncode != 0 and "FAILED   provider: the shim provider is not built" in doctor.stdout


def test_shim_and_python_disagree_on_the_key_info_struct(tpm_client, pki, test_tpm, tmp_path: Path):
    """A shim built from other sources than the Python beside it (its key-info struct differs) is
    refused at load in one line, before any callback could write past the ctypes mirror."""
    copy = tmp_path / "site"
    shutil.copytree(Path(tpmtls.__file__).parent, copy / "tpmtls")
    init = copy / "tpmtls" / "provider" / "__init__.py"
    source = init.read_text()
    assert '("pub", ctypes.c_ubyte * 1024)' in source
    init.write_text(source.replace('("pub", ctypes.c_ubyte * 1024)', '("pub", ctypes.c_ubyte * 512)'))
    cert, key = tpm_client["ecc-p256"]
    proc = run_python(f"""
        import tpmtls
        assert tpmtls.__file__.startswith({str(copy)!r})
        try:
            tpmtls.ssl_context({str(cert)!r}, {str(key)!r}, {str(pki.ca_file)!r})
        except tpmtls.ProviderError as e:
            print("error:", e)
    """, test_tpm.env, pythonpath=without_editable_install(copy), args=("-S",))
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert "does not match this tpmtls" in proc.stdout and "reinstall" in proc.stdout, proc.stdout
