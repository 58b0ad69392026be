"""A user's own OPENSSL_CONF: tpmtls adds its provider to theirs, in both OpenSSLs of the process,
and when their config stands in the way, doctor and the TLS entry points say which file and what
to do. Each config is read by the real OpenSSLs, in a child Python of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tpmtls.lab.process import child_env

DEBIAN = Path("/etc/ssl/openssl.cnf")  # what a user's OPENSSL_CONF most often names

# Theirs, as users write them: initialisation and a providers list, one with ssl settings too
THEIR_PROVIDERS = """\
openssl_conf = my_init
[ my_init ]
providers = my_providers
ssl_conf = my_ssl
[ my_providers ]
default = my_default
[ my_default ]
activate = 1
[ my_ssl ]
system_default = my_system
[ my_system ]
MinProtocol = TLSv1.2
"""
NO_PROVIDERS = "openssl_conf = my_init\n[my_init]\nssl_conf = my_ssl\n[my_ssl]\nsystem_default = s\n[s]\nMinProtocol = TLSv1.2\n"
NO_INIT = "# only defaults for the openssl command\n[req]\ndistinguished_name = dn\n[dn]\n"
# A provider of theirs under tpmtls's name (say, from an old guide), never activated
NAME_TAKEN = THEIR_PROVIDERS.replace("default = my_default", "default = my_default\ntpmtls = their_tpmtls") + \
    "[their_tpmtls]\nmodule = /nonexistent/tpmtls.so\n"


def _handshakes(conf: Path, cert: Path, key: Path, ca: Path, port: int, env: dict[str, str]) -> dict:
    """In a child with OPENSSL_CONF=conf: doctor's provider findings and a handshake through each path."""
    code = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(Path(__file__).parents[1])!r})
        import tpmtls
        from tpmtls.doctor import tpm
        from support.tls_clients import client_subject, pyopenssl_get, stdlib_get
        out = {{"provider": [[f.status, f.message] for f in tpm.check_provider()]}}
        for name, make, get in (("stdlib", tpmtls.ssl_context, stdlib_get),
                                ("pyopenssl", tpmtls.pyopenssl_context, pyopenssl_get)):
            extra = {{"hostname": "localhost"}} if name == "pyopenssl" else {{}}
            try:
                ctx = make({str(cert)!r}, {str(key)!r}, {str(ca)!r}, **extra)
                out[name] = client_subject(get(ctx, {port}))
            except tpmtls.TpmtlsError as e:
                out[name] = "error: " + str(e)
        print(json.dumps(out))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**child_env(env), "OPENSSL_CONF": str(conf)}, cwd=conf.parent)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("kind", ["debian", "their-providers", "no-providers", "no-init"])
def test_the_shim_joins_a_users_own_config_in_both_openssls(kind, tpm_client, pki, s_server, test_tpm, tmp_path):
    conf = DEBIAN if kind == "debian" else tmp_path / "their.cnf"
    if kind != "debian":
        conf.write_text({"their-providers": THEIR_PROVIDERS, "no-providers": NO_PROVIDERS, "no-init": NO_INIT}[kind])
    elif not conf.is_file():
        pytest.fail(f"{conf}: Debian's openssl package ships it; install openssl")
    cert, key = tpm_client["ecc-p256"]
    said = _handshakes(conf, cert, key, pki.ca_file, s_server.port, test_tpm.env)
    assert [status for status, _ in said["provider"]] == ["ok", "ok"], said
    assert said["stdlib"] == said["pyopenssl"] == "CN=tpm-client-ecc-p256", said


def test_a_provider_of_theirs_named_tpmtls_is_named_in_one_line(tpm_client, pki, s_server, test_tpm, tmp_path):
    """cryptography's OpenSSL takes ours over theirs; the system one cannot, and says so."""
    conf = tmp_path / "their.cnf"
    conf.write_text(NAME_TAKEN)
    cert, key = tpm_client["ecc-p256"]
    said = _handshakes(conf, cert, key, pki.ca_file, s_server.port, test_tpm.env)
    (theirs, _), (system, message) = said["provider"]
    assert (theirs, system) == ("ok", "failed"), said
    assert "refused the tpmtls provider" in message and "could not load the shared library" in message, message
    assert "name a provider 'tpmtls' of its own?" in message, message
    assert said["pyopenssl"] == "CN=tpm-client-ecc-p256", said
    assert said["stdlib"].startswith("error: the system OpenSSL") and "OPENSSL_CONF" in said["stdlib"], said


def test_a_config_openssl_cannot_parse_is_named_with_what_to_do(tpm_client, pki, s_server, test_tpm, tmp_path):
    conf = tmp_path / "broken.cnf"
    conf.write_text("openssl_conf = my_init\n[my_init\nproviders\n")
    cert, key = tpm_client["ecc-p256"]
    said = _handshakes(conf, cert, key, pki.ca_file, s_server.port, test_tpm.env)
    (theirs, message), _ = said["provider"]
    assert theirs == "failed" and f"$OPENSSL_CONF ({conf}): check that file, or unset OPENSSL_CONF" in message, said
    assert said["pyopenssl"].startswith("error: cryptography's OpenSSL (pyOpenSSL) did not load") and str(conf) in \
        said["pyopenssl"], said
    assert os.path.isfile(conf)  # theirs, untouched
