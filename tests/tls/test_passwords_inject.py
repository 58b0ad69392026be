"""Password keys never make tpmtls prompt; the CLI asks on a terminal like ssh does.

Also: `inject_into_ssl(tcti)` keeps its TCTI in module state (the environment is left
alone), and `extract_from_ssl()` stays undone whatever factory is called later.
"""

from __future__ import annotations

import os
import pty
import select
import signal
import ssl
import sys
import textwrap
import time
from pathlib import Path

import pytest

import tpmtls
from support.tls_clients import client_subject, stdlib_get
from tpmtls import provider
from tpmtls.lab.process import child_env

PASSWORD = "open sesame"


@pytest.fixture(scope="module")
def pw_client(tpm, pki):
    """A TPM client key with a password and its certificate."""
    key_path = pki.dir / "inject-pw.key"
    key = tpm.create_key("ecc-p256", key_path, password=PASSWORD)
    return pki.issue(key.public_key(), "inject-pw", "inject-pw.crt"), key_path


@pytest.fixture
def injected(test_tpm, monkeypatch):
    for name in ("TPMTLS_TCTI", "TPM2TOOLS_TCTI"):
        monkeypatch.delenv(name, raising=False)
    tpmtls.inject_into_ssl(test_tpm.tcti)
    yield
    tpmtls.extract_from_ssl()


def run_in_pty(argv: list[str], env: dict[str, str], cwd: Path, answer: bytes | None = None,
               seconds: float = 60) -> tuple[int, str]:
    """Run argv on a new pseudo-terminal; type `answer` when it asks for a password. Bounded."""
    pid, fd = pty.fork()
    if pid == 0:  # child: never returns
        try:
            os.chdir(cwd)
            os.execvpe(argv[0], argv, env)
        finally:
            os._exit(127)
    out, answered, status = b"", False, None
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:  # EIO: the child closed the terminal
                    data = b""
                out += data
                if answer is not None and not answered and b"assword" in out:
                    os.write(fd, answer + b"\n")
                    answered = True
                if data:
                    continue
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = st
                break
    finally:
        if status is None:
            os.kill(pid, signal.SIGKILL)
            status = os.waitpid(pid, 0)[1]
        os.close(fd)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


def test_load_cert_chain_with_password_after_inject(injected, pw_client, pki, s_server):
    cert, key = pw_client
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    ctx.load_cert_chain(str(cert), str(key), password=PASSWORD)
    assert client_subject(stdlib_get(ctx, s_server.port)) == "CN=inject-pw"
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    ctx.load_cert_chain(str(cert), str(key), password=lambda: PASSWORD)  # the callable form too
    assert client_subject(stdlib_get(ctx, s_server.port)) == "CN=inject-pw"


def test_missing_or_wrong_password_after_inject_is_one_clear_error(injected, pw_client):
    cert, key = pw_client
    with pytest.raises(ssl.SSLError) as missing:
        ssl.create_default_context().load_cert_chain(str(cert), str(key))
    assert isinstance(missing.value, tpmtls.TpmtlsError)
    assert str(missing.value) == f"{key}: this key has a password and none was given"
    with pytest.raises(ssl.SSLError) as wrong:
        ssl.create_default_context().load_cert_chain(str(cert), str(key), password="wrong")
    assert isinstance(wrong.value, tpmtls.TpmtlsError)
    assert str(wrong.value).startswith(f"{key}: wrong password")


def test_a_raising_password_callable_raises_its_own_exception(injected, pw_client, capfd):
    """As plain ssl does; and nothing is left pending for the provider's callbacks to trip on."""
    cert, key = pw_client

    def refuse() -> str:
        raise LookupError("no password in the keyring")

    with pytest.raises(LookupError, match="no password in the keyring"):
        ssl.create_default_context().load_cert_chain(str(cert), str(key), password=refuse)
    with pytest.raises(TypeError, match="not int"):
        ssl.create_default_context().load_cert_chain(str(cert), str(key), password=lambda: 42)
    assert "Exception ignored" not in capfd.readouterr().err


def test_inject_leaves_the_environment_alone(test_tpm, tpm_client, monkeypatch):
    for name in ("TPMTLS_TCTI", "TPM2TOOLS_TCTI"):
        monkeypatch.delenv(name, raising=False)
    before = dict(os.environ)
    cert, key = tpm_client["ecc-p256"]
    tpmtls.inject_into_ssl(test_tpm.tcti)
    try:
        assert dict(os.environ) == before
        ssl.create_default_context().load_cert_chain(str(cert), str(key))  # the TCTI came from inject
    finally:
        tpmtls.extract_from_ssl()
    assert dict(os.environ) == before


def test_extract_stays_undone_after_a_later_ssl_context(test_tpm, tpm_client, pki, s_server):
    cert, key = tpm_client["ecc-p256"]
    tpmtls.inject_into_ssl(test_tpm.tcti)
    made_while_injected = tpmtls.ssl_context(cert, key, pki.ca_file, tcti=test_tpm.tcti)
    tpmtls.extract_from_ssl()
    later = tpmtls.ssl_context(cert, key, pki.ca_file, tcti=test_tpm.tcti)  # used to re-enable plain decoding
    with pytest.raises(ssl.SSLError):
        ssl.create_default_context().load_cert_chain(str(cert), str(key))
    assert not provider.state.system_loaded
    # contexts made before and after still sign in the TPM
    for ctx in (made_while_injected, later):
        assert client_subject(stdlib_get(ctx, s_server.port)) == "CN=tpm-client-ecc-p256"
    # inject works again after extract, and extract twice is harmless
    tpmtls.inject_into_ssl(test_tpm.tcti)
    ssl.create_default_context().load_cert_chain(str(cert), str(key))
    tpmtls.extract_from_ssl()
    tpmtls.extract_from_ssl()
    with pytest.raises(ssl.SSLError):
        ssl.create_default_context().load_cert_chain(str(cert), str(key))


NO_PROMPT = """
    import ssl, sys, tpmtls
    {setup}
    try:
        {call}
    except tpmtls.TpmtlsError as e:
        print("error:", e)
        sys.exit(1)
    print("loaded without a password?!")
"""


@pytest.mark.parametrize("how", ["inject", "ssl_context", "pyopenssl_context"])
def test_library_never_prompts_on_a_terminal(how, pw_client, pki, test_tpm, tmp_path):
    cert, key = pw_client
    setup, call = {
        "inject": ("tpmtls.inject_into_ssl()", f"ssl.create_default_context().load_cert_chain({str(cert)!r}, {str(key)!r})"),
        "ssl_context": ("", f"tpmtls.ssl_context({str(cert)!r}, {str(key)!r}, {str(pki.ca_file)!r})"),
        "pyopenssl_context": ("", f"tpmtls.pyopenssl_context({str(cert)!r}, {str(key)!r}, {str(pki.ca_file)!r}, "
                                  "hostname='localhost')"),
    }[how]
    code = textwrap.dedent(NO_PROMPT).format(setup=setup, call=call)
    status, out = run_in_pty([sys.executable, "-c", code], child_env(test_tpm.env), tmp_path, seconds=60)
    assert "pass phrase" not in out.lower() and "password:" not in out.lower(), out
    assert status == 1, out
    assert f"error: {key}: this key has a password and none was given" in out


def test_cli_connect_asks_for_the_password_on_a_terminal(pw_client, pki, s_server, test_tpm, tmp_path):
    cert, key = pw_client
    argv = [sys.executable, "-m", "tpmtls", "connect", f"127.0.0.1:{s_server.port}", "--cert", str(cert),
            "--key", str(key), "--cafile", str(pki.ca_file), "--servername", "localhost"]
    status, out = run_in_pty(argv, child_env(test_tpm.env), tmp_path, answer=PASSWORD.encode())
    assert f"Password for {key}:" in out
    assert PASSWORD not in out  # not echoed
    assert status == 0, out
    assert "client signature: ecdsa_secp256r1_sha256 (in the TPM)" in out
    status, out = run_in_pty(argv, child_env(test_tpm.env), tmp_path, answer=b"wrong")
    assert status == 1 and "wrong password" in out, out


def test_cli_connect_without_a_terminal_fails_in_one_line(cli, pw_client, pki, s_server):
    cert, key = pw_client
    args = ("connect", f"127.0.0.1:{s_server.port}", "--cert", str(cert), "--key", str(key),
            "--cafile", str(pki.ca_file), "--servername", "localhost")
    line = cli.fails(*args)
    assert line == (f"tpmtls: {key}: this key has a password: give it with --password-file F "
                    "(or run on a terminal to be asked for it)")
    (cli.cwd / "pw").write_text(PASSWORD + "\n")
    assert "client signature: ecdsa_secp256r1_sha256 (in the TPM)" in cli(*args, "--password-file", "pw").stdout
    help_text = cli("connect", "--help").stdout
    assert "asked for on the terminal" in " ".join(help_text.split())
