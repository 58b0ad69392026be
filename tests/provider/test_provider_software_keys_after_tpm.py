"""Software client keys keep working in the system OpenSSL after a TPM key has signed there.

Once a TPM key had signed one handshake, OpenSSL 3.0 answered every later fetch of the
"EC" (and "RSA") key manager with the shim's: contexts made afterwards left the NIST
curves out of their TLS groups, so a TLS 1.2 client offered only X25519/X448 and servers
with a P-256 certificate refused it ("no shared cipher" in s_server, Go: "wrong curve").
docs/provider.md, "Keys sign through an active provider", says why.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import subprocess
import sys
import textwrap

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import tpmtls
from support import ROOT
from support.commands import require
from support.peers import OpenSSLServer
from support.system_openssl import keymgmt_provider
from support.tls_clients import client_subject, pyopenssl_get, stdlib_get
from tpmtls.lab.process import child_env

SOFTWARE = {"p256": lambda: ec.generate_private_key(ec.SECP256R1()),
            "p384": lambda: ec.generate_private_key(ec.SECP384R1()),
            "rsa2048": lambda: rsa.generate_private_key(65537, 2048)}


@pytest.fixture(scope="module")
def software(pki):
    """Software client certificates from the test CA: {kind: (cert, key)}."""
    return {kind: pki.software_client(f"software-{kind}", generate()) for kind, generate in SOFTWARE.items()}


@pytest.fixture(scope="module")
def tls12_server(pki):
    """`openssl s_server -tls1_2 -Verify 1`: only TLS 1.2, a client certificate required."""
    require("openssl")
    with OpenSSLServer(pki, "-tls1_2") as server:
        yield server


def stdlib_tls12(pki, cert, key) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    ctx.load_cert_chain(str(cert), str(key))
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def pyopenssl_tls12(pki, cert, key):
    from OpenSSL import SSL

    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_verify(SSL.VERIFY_PEER)
    ctx.load_verify_locations(str(pki.ca_file))
    ctx.use_certificate_file(str(cert))
    ctx.use_privatekey_file(str(key))
    return ctx


def software_subjects(pki, software, port: int) -> dict[str, str | None]:
    """What s_server saw of each software client certificate over TLS 1.2 from both OpenSSLs
    (or the client's error: the whole picture in one assertion)."""
    from OpenSSL import SSL

    seen: dict[str, str | None] = {}
    for kind, (cert, key) in software.items():
        for path, context, get in (("stdlib", stdlib_tls12, stdlib_get), ("pyopenssl", pyopenssl_tls12, pyopenssl_get)):
            try:
                seen[f"{path} {kind}"] = client_subject(get(context(pki, cert, key), port))
            except (ssl.SSLError, SSL.Error) as e:
                seen[f"{path} {kind}"] = f"failed: {e}"
    return seen


def expected(software) -> dict[str, str]:
    return {f"{path} {kind}": f"CN=software-{kind}" for kind in software for path in ("stdlib", "pyopenssl")}


def tpm_handshake(path: str, alg: str, version: str, tpm_client, pki, s_server, test_tpm) -> None:
    cert, key = tpm_client[alg]
    if path == "stdlib":
        ctx = tpmtls.ssl_context(cert, key, pki.ca_file, tcti=test_tpm.tcti, tls_version=version, resume=False)
        page = stdlib_get(ctx, s_server.port)
    else:
        ctx = tpmtls.pyopenssl_context(cert, key, pki.ca_file, hostname="localhost", tcti=test_tpm.tcti,
                                       tls_version=version, resume=False)
        page = pyopenssl_get(ctx, s_server.port)
    assert client_subject(page) == f"CN=tpm-client-{alg}"


@pytest.mark.parametrize("path", ["stdlib", "pyopenssl"])
@pytest.mark.parametrize("version", ["1.3", "1.2"])
@pytest.mark.parametrize("alg", ["ecc-p256", "rsa2048"])
def test_tls12_software_clients_after_a_tpm_handshake(alg, version, path, tpm_client, pki, s_server, test_tpm,
                                                      software, tls12_server):
    tpm_handshake(path, alg, version, tpm_client, pki, s_server, test_tpm)
    assert software_subjects(pki, software, tls12_server.port) == expected(software)


@pytest.mark.parametrize("alg", ["ecc-p256", "rsa2048"])
def test_any_provider_fetch_still_gets_the_default_key_managers(alg, tpm_client, pki, s_server, test_tpm):
    """The cause, seen directly: after a TPM signature, "EC" and "RSA" still come from the
    default provider when nobody names one (ssl_load_groups asks exactly that)."""
    tpm_handshake("stdlib", alg, "1.3", tpm_client, pki, s_server, test_tpm)
    assert (keymgmt_provider(b"EC"), keymgmt_provider(b"RSA")) == ("default", "default")


def test_go_server_after_a_tpm_handshake(tpm_client, pki, s_server, test_tpm, software, registry):
    """docker-registry (Go) takes a software P-256 client over TLS 1.2 after a TPM handshake."""
    tpm_handshake("stdlib", "ecc-p256", "1.3", tpm_client, pki, s_server, test_tpm)
    cert, key = software["p256"]
    conn = http.client.HTTPSConnection("localhost", registry.port, context=stdlib_tls12(pki, cert, key), timeout=20)
    try:
        conn.request("GET", "/v2/")
        assert conn.getresponse().status == 200
    finally:
        conn.close()


# A process of its own runs `steps` in order ("tpm": one TPM handshake through ssl_context;
# "software": each software key over TLS 1.2 through the stdlib) and prints what the servers saw.
FRESH_PROCESS = """
    import json, ssl, sys
    import tpmtls
    from support.tls_clients import client_subject, stdlib_get
    plan = json.loads(sys.argv[1])
    seen = []
    for step in plan["steps"]:
        if step == "tpm":
            ctx = tpmtls.ssl_context(*plan["tpm"], plan["ca"], tcti=plan["tcti"], resume=False)
            seen.append(client_subject(stdlib_get(ctx, plan["port"])))
            continue
        for cert, key in plan["software"]:
            ctx = ssl.create_default_context(cafile=plan["ca"])
            ctx.load_cert_chain(cert, key)
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
            try:
                seen.append(client_subject(stdlib_get(ctx, plan["tls12_port"])))
            except ssl.SSLError as e:
                seen.append(str(e))
    print(json.dumps(seen))
"""


@pytest.mark.parametrize("steps", [["tpm", "software"], ["software", "tpm", "software"], ["software", "software"],
                                   ["tpm", "tpm", "software"]])
def test_in_a_fresh_process(steps, tpm_client, pki, s_server, test_tpm, software, tls12_server):
    """The order within one process, from its start: TPM first, software first, software only."""
    cert, key = tpm_client["ecc-p256"]
    plan = {"steps": steps, "tpm": [str(cert), str(key)], "ca": str(pki.ca_file), "tcti": test_tpm.tcti,
            "port": s_server.port, "tls12_port": tls12_server.port,
            "software": [[str(c), str(k)] for c, k in software.values()]}
    env = child_env({"PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])})
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(FRESH_PROCESS), json.dumps(plan)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    want = []
    for step in steps:
        want += ["CN=tpm-client-ecc-p256"] if step == "tpm" else [f"CN=software-{kind}" for kind in software]
    assert json.loads(proc.stdout) == want


# A process of its own loads the shim into the system OpenSSL and, before anything else
# fetches a key manager, reads a TPM key file through OpenSSL's plain PEM API (as any
# library in the process may while tpmtls is injected); it prints which provider answers
# "EC" and "RSA" from any provider afterwards.
READ_FIRST = """
    import json, sys
    from tpmtls import provider
    from support.system_openssl import keymgmt_provider, read_private_key
    plan = json.loads(sys.argv[1])
    provider.load_into_system_ssl()
    read_private_key(plan["key"], plan["tcti"])
    print(json.dumps([keymgmt_provider(b"EC"), keymgmt_provider(b"RSA")]))
"""


@pytest.mark.parametrize("alg", ["ecc-p256", "rsa2048"])
def test_a_tpm_key_read_first_after_loading(alg, tpm_client, test_tpm):
    """Only a TPM key read through the plain PEM API follows the shim's activation (no
    SSLContext, no certificate first): "EC" and "RSA" still come from the default provider."""
    cert, key = tpm_client[alg]
    env = child_env({"PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])})
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(READ_FIRST),
                           json.dumps({"key": str(key), "tcti": test_tpm.tcti})], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == ["default", "default"]
