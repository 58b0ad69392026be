"""A client key with a password in certs.d: tpmtls-push, tpmtls-pull and tpmtls proxy take it
from --password-file (or the terminal); without one, or with a wrong one, one line says so."""

from __future__ import annotations

import http.client
import shutil

import pytest

from support.commands import Cli, one_line
from support.proxy import RegistryProxyProcess
from support.registry import env_for, run_cli

SECRET = "certs.d-secret"


@pytest.fixture(scope="module")
def pw_certs(tpm, pki, tmp_path_factory):
    """A certs.d directory whose client.key is a TPM key with a password, and files holding it or not."""
    d = tmp_path_factory.mktemp("pw-certs")
    certs = d / "certs"
    certs.mkdir()
    key = tpm.create_key("ecc-p256", certs / "client.key", password=SECRET)
    shutil.copy(pki.issue(key.public_key(), "pw-pusher", "pw-pusher.cert"), certs / "client.cert")
    shutil.copy(pki.ca_file, certs / "ca.crt")
    (d / "pw").write_text(SECRET + "\n")
    (d / "wrong").write_text("not it\n")
    return certs, d / "pw", d / "wrong"


def test_push_and_pull_take_the_keys_password_from_a_file(registry, pw_certs, small_image, test_tpm, tmp_path):
    certs, pw, wrong = pw_certs
    dest = f"localhost:{registry.port}/pw/x:1"
    env = env_for(test_tpm, tmp_path)

    def push(*extra: str):
        return run_cli("push", f"docker-archive:{small_image}", dest, "--cert-dir", str(certs), *extra, env=env)

    line = one_line(push())  # no terminal here: say how to give it
    assert f"{certs / 'client.key'}: this key has a password" in line and "--password-file" in line, line
    line = one_line(push("--password-file", str(wrong)))
    assert "client.key: wrong password" in line, line
    pushed = push("--password-file", str(pw))
    assert pushed.returncode == 0, pushed.stderr
    pulled = run_cli("pull", dest, f"oci:{tmp_path / 'out'}", "--cert-dir", str(certs), "--password-file", str(pw),
                     env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert (tmp_path / "out" / "index.json").is_file()


def test_the_proxy_takes_the_keys_password_from_a_file(registry, pw_certs, test_tpm, tmp_path):
    certs, pw, _ = pw_certs
    args = ("--upstream", f"localhost:{registry.port}", "--listen", "127.0.0.1:0", "--cert-dir", str(certs))
    line = Cli(test_tpm.env, tmp_path).fails("proxy", *args)
    assert "client.key: this key has a password" in line and "--password-file" in line, line
    with RegistryProxyProcess(tmp_path, test_tpm.env, *args, "--password-file", str(pw)) as proxy:
        host, port = proxy.address.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("GET", "/v2/")
        answer = conn.getresponse()
        answer.read()
        conn.close()
    assert answer.status == 200, (answer.status, proxy.lines()[-3:])
