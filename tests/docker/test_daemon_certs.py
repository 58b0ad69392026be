"""A TLS-protected daemon done with tpmtls (docs/daemon.md): certificates for their purpose, daemon.json + drop-in from
`tpmtls certs daemon-config`, DOCKER_* from `tpmtls certs env`, a real dockerd started
from that daemon.json, and the stock docker CLI with software certificates."""

from __future__ import annotations

import json
import shutil

from support.commands import one_line, openssl
from support.daemon import (
    DOCKER,
    run,
    tls_refused_by,
    tpmtls_cli,
)


def test_openssl_accepts_each_certificate_for_its_purpose_only(daemon_pki):
    ca = str(daemon_pki.ca)
    assert b"OK" in openssl("verify", "-CAfile", ca, "-purpose", "sslserver", str(daemon_pki.server_cert)).stdout
    assert b"OK" in openssl("verify", "-CAfile", ca, "-purpose", "sslclient", str(daemon_pki.tpm_cert)).stdout
    assert b"OK" in openssl("verify", "-CAfile", ca, "-purpose", "sslclient", str(daemon_pki.soft_dir / "cert.pem")).stdout
    refused = openssl("verify", "-CAfile", ca, "-purpose", "sslserver", str(daemon_pki.tpm_cert), check=False)
    assert refused.returncode != 0 and b"unsuitable certificate purpose" in refused.stdout + refused.stderr


def test_daemon_config_prints_daemon_json_and_the_dropin(daemon_pki):
    out = tpmtls_cli("certs", "daemon-config", "--cert", str(daemon_pki.server_cert), "--key", str(daemon_pki.server_key),
                     "--ca", str(daemon_pki.ca), env=daemon_pki.env).stdout
    head, _, rest = out.partition("\n")
    assert head == "# /etc/docker/daemon.json"
    text, _, dropin = rest.partition("\n\n")
    block = json.loads(text)
    assert block == {"tls": True, "tlsverify": True, "tlscacert": str(daemon_pki.ca.resolve()),
                     "tlscert": str(daemon_pki.server_cert.resolve()), "tlskey": str(daemon_pki.server_key.resolve()),
                     "hosts": ["unix:///var/run/docker.sock", "tcp://0.0.0.0:2376"]}
    lines = [ln for ln in dropin.splitlines() if not ln.startswith("#")]
    assert lines[:3] == ["[Service]", "ExecStart=", f"ExecStart={shutil.which('dockerd')}"]


def test_daemon_config_refuses_what_dockerd_could_not_serve(daemon_pki, tmp_path):
    base = ["certs", "daemon-config", "--ca", str(daemon_pki.ca)]
    client_cert = str(daemon_pki.soft_dir / "cert.pem")
    cases = {
        "not a server certificate": ["--cert", client_cert, "--key", str(daemon_pki.soft_dir / "key.pem")],
        "a TPM key file": ["--cert", str(daemon_pki.server_cert), "--key", str(daemon_pki.tpm_key)],
        "does not belong to the key": ["--cert", str(daemon_pki.server_cert), "--key", str(daemon_pki.soft_dir / "key.pem")],
        "not signed by the CA": ["--cert", str(daemon_pki.server_cert), "--key", str(daemon_pki.server_key),
                                 "--ca", str(daemon_pki.root / "foreign-ca" / "ca.crt")],
        "no subjectAltName for 10.1.2.3": ["--cert", str(daemon_pki.server_cert), "--key", str(daemon_pki.server_key),
                                           "--host", "tcp://10.1.2.3:2376"],
        "write a Docker host": ["--cert", str(daemon_pki.server_cert), "--key", str(daemon_pki.server_key),
                                "--host", "0.0.0.0:2376"],
        "no such certificate file": ["--cert", str(tmp_path / "nope.pem"), "--key", str(daemon_pki.server_key)],
    }
    for expected, args in cases.items():
        line = one_line(tpmtls_cli(*base, *args, env=daemon_pki.env, check=False))
        assert expected in line, (expected, line)
    out = tmp_path / "out"
    out.mkdir()
    one_line(tpmtls_cli(*base, "--cert", client_cert, "--key", str(daemon_pki.soft_dir / "key.pem"), "--out", str(out),
                        env=daemon_pki.env, check=False))
    assert list(out.iterdir()) == []  # nothing half-written


def test_certs_env_lays_out_the_cert_path_and_prints_docker_variables(daemon_pki, tmp_path):
    cert_path = tmp_path / "tpm-certs"
    proc = tpmtls_cli("certs", "env", "127.0.0.1:2376", "--cert-path", str(cert_path), "--cert",
                      str(daemon_pki.tpm_cert), "--key", str(daemon_pki.tpm_key), "--ca", str(daemon_pki.ca),
                      env=daemon_pki.env)
    assert proc.stdout.splitlines() == ["export DOCKER_HOST=tcp://127.0.0.1:2376", "export DOCKER_TLS_VERIFY=1",
                                        f"export DOCKER_CERT_PATH={cert_path.resolve()}"]
    assert sorted(p.name for p in cert_path.iterdir()) == ["ca.pem", "cert.pem", "key.pem"]
    assert (cert_path / "key.pem").read_bytes() == daemon_pki.tpm_key.read_bytes()
    assert (cert_path / "key.pem").stat().st_mode & 0o777 == 0o600
    again = tpmtls_cli("certs", "env", "127.0.0.1:2376", "--cert-path", str(cert_path), env=daemon_pki.env)
    assert again.stdout == proc.stdout


def test_certs_env_names_a_missing_or_mismatched_file(daemon_pki, tmp_path):
    d = tmp_path / "certs"
    d.mkdir()
    shutil.copy(daemon_pki.ca, d / "ca.pem")
    shutil.copy(daemon_pki.tpm_cert, d / "cert.pem")
    line = one_line(tpmtls_cli("certs", "env", "h:2376", "--cert-path", str(d), env=daemon_pki.env, check=False))
    assert f"{d / 'key.pem'}: missing" in line
    other = tmp_path / "other.key"
    tpmtls_cli("key", "create", "--alg", "ecc-p256", "--out", str(other), env=daemon_pki.env)
    shutil.copy(other, d / "key.pem")
    line = one_line(tpmtls_cli("certs", "env", "h:2376", "--cert-path", str(d), env=daemon_pki.env, check=False))
    assert "does not belong to the key" in line
    line = one_line(tpmtls_cli("certs", "env", "h", "--cert-path", str(d), env=daemon_pki.env, check=False))
    assert "HOST:PORT" in line


def test_dockerd_from_daemon_config_serves_the_stock_cli_with_software_certificates(daemon_pki, tls_dockerd):
    daemon, port = tls_dockerd
    soft = daemon_pki.soft_dir
    proc = run([DOCKER, "--tlsverify", f"--tlscacert={soft / 'ca.pem'}", f"--tlscert={soft / 'cert.pem'}",
                f"--tlskey={soft / 'key.pem'}", "-H", f"tcp://127.0.0.1:{port}", "version", "--format",
                "{{.Server.APIVersion}}"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith("1.")
    env = {"DOCKER_HOST": f"tcp://127.0.0.1:{port}", "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(soft)}
    assert run([DOCKER, "version"], env=env).returncode == 0


def test_dockerd_refuses_a_foreign_or_missing_client_certificate(daemon_pki, tls_dockerd):
    _daemon, port = tls_dockerd
    assert tls_refused_by(port, daemon_pki.soft_dir / "cert.pem", daemon_pki.soft_dir / "key.pem", daemon_pki.ca) == ""
    assert tls_refused_by(port, daemon_pki.foreign_dir / "cert.pem", daemon_pki.foreign_dir / "key.pem", daemon_pki.ca) != ""
    assert tls_refused_by(port, None, None, daemon_pki.ca) != ""
    env = {"DOCKER_HOST": f"tcp://127.0.0.1:{port}", "DOCKER_TLS_VERIFY": "1",
           "DOCKER_CERT_PATH": str(daemon_pki.foreign_dir)}
    proc = run([DOCKER, "version", "--format", "{{.Server.Version}}"], env=env)
    assert proc.returncode != 0 and "bad certificate" in proc.stderr
    proc = run([DOCKER, "--tlsverify", f"--tlscacert={daemon_pki.ca}", "-H", f"tcp://127.0.0.1:{port}", "version",
                "--format", "{{.Server.Version}}"], env={"DOCKER_CERT_PATH": str(daemon_pki.root / "nothing-here")})
    assert proc.returncode != 0 and "client authentication (--tlsverify) enabled" in proc.stderr, proc.stderr
