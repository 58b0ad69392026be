"""Machine A enrolls against `tpmtls enroll-server` (both as their own processes), then pushes with the cert.

The TPM has an EK certificate from a private swtpm_localca; the policy is recorded from
A itself with `tpmtls enroll policy`; the registry accepts client certs of the file CA.
"""

from __future__ import annotations

import re
import shutil

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from support.attest import EkCa, ek_machine
from support.commands import Cli, require
from support.enroll_server import ServerProcess
from support.registry import env_for, run_cli
from support.schemas import validated


@pytest.fixture(scope="module")
def enroll_server_process(tmp_path_factory):
    """(tmp, machine, cli, server): machine A (EK certificates from a private EK CA) driven by the
    CLI, and `tpmtls enroll-server` as its own process, issuing from tmp/ca under A's PCR policy."""
    require("swtpm", "swtpm_setup", "swtpm_localca", "tpm2-abrmd")
    tmp = tmp_path_factory.mktemp("enroll")
    ek_ca = EkCa(tmp / "ekca")
    machine = ek_machine(tmp / "a", ek_ca)
    cli = Cli(machine.env, tmp)
    cli("ca", "init", str(tmp / "ca"), "--name", "fleet CA")
    cli("enroll", "policy", "--pcrs", "sha256:0,1,2,3,4,5,6,7", "--out", str(tmp / "policy.json"))
    server = ServerProcess(machine.env, tmp, "--ca", str(tmp / "ca"), "--ek-roots",
                           str(ek_ca.bundle(tmp / "ek-roots.pem")), "--policy", str(tmp / "policy.json"))
    yield tmp, machine, cli, server
    rc = server.stop()
    machine.stop()
    assert rc == 0, server.log.read_text()
    assert "Traceback" not in server.log.read_text()


def test_policy_file_records_current_pcrs(enroll_server_process):
    tmp, _, cli, _ = enroll_server_process
    import json

    doc = json.loads((tmp / "policy.json").read_text())
    assert sorted(doc["pcrs"]["sha256"], key=int) == [str(i) for i in range(8)]
    assert all(len(v[0]) == 64 for v in doc["pcrs"]["sha256"].values())
    assert "already exists" in cli.fails("enroll", "policy", "--out", str(tmp / "policy.json"))


def test_machine_enrolls_and_pushes_with_the_certificate(enroll_server_process, pki, small_image, tmp_path):
    tmp, machine, cli, server = enroll_server_process
    require("docker-registry")
    from tpmtls.lab import Registry

    certs_d = tmp_path / "certs.d"
    with Registry(pki.server_cert, pki.server_key, tmp / "ca" / "ca.crt", tmp_path / "registry") as reg:
        host = f"localhost:{reg.port}"
        proc = cli("enroll", "--acme", server.directory, "--id", "ek", "--cafile", str(tmp / "ca" / "ca.crt"),
                   "--key-out", str(tmp_path / "client.key"), "--cert-out", str(tmp_path / "client.cert"),
                   "--install", host, env={"TPMTLS_CERTS_D": str(certs_d)})
        assert re.match(r"enrolled urn:ek:sha256:\S+: key .*client.key \(ecc-p256, created in the TPM, "
                        r"fixedTPM\|fixedParent\)", proc.stdout), proc.stdout
        assert proc.stderr == ""
        shown = cli("key", "show", str(tmp_path / "client.key")).stdout
        assert "fixedtpm|fixedparent|sensitivedataorigin" in shown.lower()
        assert "origin: created in the TPM; cannot leave this TPM" in shown
        cert = x509.load_pem_x509_certificates((tmp_path / "client.cert").read_bytes())[0]
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
        assert cert.subject.rfc4514_string().startswith("CN=urn:ek:sha256:")
        issued = list((tmp / "ca" / "issued").glob("*.pem"))
        assert f"{cert.serial_number:x}.pem" in [p.name for p in issued]
        assert (certs_d / host / "client.key").read_bytes() == (tmp_path / "client.key").read_bytes()
        shutil.copy(pki.ca_file, certs_d / host / "ca.crt")  # the registry's own server CA
        push = run_cli("push", f"docker-archive:{small_image}", f"{host}/enrolled:1",
                       env=env_for(machine, tmp_path, TPMTLS_CERTS_D=str(certs_d)))
        assert push.returncode == 0, push.stderr
        assert "enrolled:1" in push.stdout or "1: digest: sha256:" in push.stdout


def test_renew_re_attests_the_same_key(enroll_server_process, tmp_path):
    tmp, _, cli, server = enroll_server_process
    args = ("--acme", server.directory, "--cafile", str(tmp / "ca" / "ca.crt"),
            "--key-out", str(tmp_path / "k"), "--cert-out", str(tmp_path / "c"))
    cli("enroll", *args)
    key_before = (tmp_path / "k").read_bytes()
    first = x509.load_pem_x509_certificates((tmp_path / "c").read_bytes())[0]
    proc = cli("enroll", *args, "--renew", "--format", "json")
    renewed = validated(proc.stdout, "enroll")
    second = x509.load_pem_x509_certificates((tmp_path / "c").read_bytes())[0]
    assert (renewed["scheme"], renewed["renewed"], renewed["key"], renewed["certificate"], renewed["installed"]) == (
        "acme", True, str(tmp_path / "k"), str(tmp_path / "c"), None)
    assert int(renewed["serial"], 16) == second.serial_number and renewed["identifier"].startswith("urn:ek:sha256:")
    assert (tmp_path / "k").read_bytes() == key_before
    assert second.serial_number != first.serial_number
    assert second.public_key() == first.public_key()
    other = ("--key-out", str(tmp_path / "k2"), "--cert-out", str(tmp_path / "c2"))
    cli("enroll", *args[:4], *other)
    line = cli.fails("enroll", *args[:4], "--key-out", str(tmp_path / "k"), "--cert-out", str(tmp_path / "c2"),
                     "--renew")
    assert line.endswith(f"{tmp_path / 'c2'} is not the certificate of {tmp_path / 'k'}; renew each key with its own")


def test_untrusted_server_is_one_line_and_writes_nothing(enroll_server_process, tmp_path):
    tmp, _, cli, server = enroll_server_process
    line = cli.fails("enroll", "--acme", server.directory, "--key-out", str(tmp_path / "k"),
                     "--cert-out", str(tmp_path / "c"))
    assert "TLS verification failed" in line and "--cafile" in line
    assert not (tmp_path / "k").exists() and not (tmp_path / "c").exists()


def test_enroll_server_bad_files_are_one_line(enroll_server_process, tmp_path):
    tmp, _, cli, _ = enroll_server_process
    line = cli.fails("enroll-server", "--ca", str(tmp_path / "nope"), "--ek-roots", str(tmp / "ek-roots.pem"),
                     "--policy", str(tmp / "policy.json"))
    assert "not a CA directory" in line
    (tmp_path / "bad.json").write_text("{}")
    line = cli.fails("enroll-server", "--ca", str(tmp / "ca"), "--ek-roots", str(tmp / "ek-roots.pem"),
                     "--policy", str(tmp_path / "bad.json"))
    assert "bad.json: not a PCR policy" in line
    line = cli.fails("enroll-server", "--ca", str(tmp / "ca"), "--ek-roots", str(tmp / "policy.json"),
                     "--policy", str(tmp / "policy.json"))
    assert "holds no PEM certificate" in line


def test_refusal_is_one_line_on_both_sides(enroll_server_process, tmp_path):
    tmp, _, cli, server = enroll_server_process
    line = cli.fails("enroll", "--acme", server.directory, "--id", "urn:ek:sha256:not-this-tpm",
                     "--cafile", str(tmp / "ca" / "ca.crt"), "--key-out", str(tmp_path / "k"),
                     "--cert-out", str(tmp_path / "c"))
    assert line.startswith(f"tpmtls: {server.directory}: refused (badAttestationStatement): "
                           "permanent identifier does not match"), line
    assert not (tmp_path / "k").exists() and not (tmp_path / "c").exists()
    logged = [s for s in server.log.read_text().splitlines() if "not-this-tpm" in s]
    # a warning line of the long-running server: the time, then the command (docs/services.md, "Logs")
    assert len(logged) == 1 and re.match(r"\d\d:\d\d:\d\d tpmtls enroll-server: warning: refused POST /acme/chall/",
                                         logged[0]), logged


def test_a_full_disk_leaves_neither_key_nor_certificate_and_the_rerun_works(enroll_server_process, tmp_path):
    """`enroll --acme` onto a full file system (a tmpfs filled up, in the command's own mount
    namespace): one line naming where, no key without its certificate; the same command then works."""
    require("unshare")
    from support.sweep import Case, run_case

    tmp, machine, cli, server = enroll_server_process
    args = ["enroll", "--acme", server.directory, "--cafile", str(tmp / "ca" / "ca.crt"),
            "--key-out", "box/client.key", "--cert-out", "box/client.cert", "--install", "registry.example:5000"]
    result = run_case(Case("acme onto a full disk", "tpmtls", args, env=dict(machine.env), mount="full"),
                      tmp_path / "full", {})
    assert result.problems() == [], (result.stderr, result.returncode)
    assert "box/client" in result.lines[0] and "No space left on device" in result.lines[0], result.lines
    assert result.box_after == [".filler"]  # neither file, nor a temp file, was left on that disk
    assert not (tmp_path / "full" / "certs.d").exists()  # nor anything installed
    again = [a.replace("box/", f"{tmp_path / 'full' / 'box'}/") for a in args]  # box/: a plain directory here
    proc = cli(*again, env={"TPMTLS_CERTS_D": str(tmp_path / "full" / "certs.d")})
    assert proc.stdout.startswith("enrolled ")
    assert sorted(p.name for p in (tmp_path / "full" / "box").iterdir()) == ["client.cert", "client.cert.renew.json",
                                                                             "client.key"]
